"""The seams the request path runs on: circuit breaker and round-trip tracking."""

from __future__ import annotations

import random

from gateway.runtime import AnswerTimes, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.allow()
    breaker.success()  # a success resets the count
    for _ in range(3):
        breaker.failure()
    assert not breaker.allow()
    assert breaker.reset_after == 10
    clock.now += 10
    assert breaker.allow()  # one probe
    assert not breaker.allow()  # and only one per cooldown
    breaker.success()
    assert breaker.allow()
    assert not breaker.open


def test_local_answers_take_times_drawn_from_vendor_bound_answers_of_the_route() -> None:
    """Answers the vendor never saw wait as long as a recent vendor-bound answer of
    the same route took, so their time distribution is the vendor's."""
    times = AnswerTimes(0.02, min_samples=10, rng=random.Random(1))
    for i in range(100):
        times.observe("klout", "/v2/user.json/{kloutId}/score", 0.100 + i / 1000)
    drawn = [times.draw("klout", "/v2/user.json/{kloutId}/score") for _ in range(500)]
    assert all(0.100 <= d < 0.200 for d in drawn)
    assert len(set(drawn)) > 50  # a distribution, not a constant
    # A route without samples of its own borrows the upstream's.
    assert 0.100 <= times.draw("klout", "/1/klout.json") < 0.200
    times.observe("klout", "/1/klout.json", 60.0)  # a stalled call is capped
    assert max(times.draw("klout", "/v2/user.json/{kloutId}/score") for _ in range(50)) <= 5.0


def test_before_any_vendor_answer_local_answers_use_the_configured_guess() -> None:
    times = AnswerTimes(0.02, rng=random.Random(2))
    assert all(0.015 <= times.draw("klout", "/x") <= 0.025 for _ in range(100))
