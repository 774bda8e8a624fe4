"""Demo mode: a simulated Klout upstream for ``gateway serve --demo`` and the tests."""
