"""Upstream adapters: one per API family, each knowing its routes, its subjects,
what "missing" and "throttled" look like, and how to write a neutral answer."""
