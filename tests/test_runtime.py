"""The seams the request path runs on: circuit breaker and round-trip tracking."""

from __future__ import annotations

from gateway.policies.model import Neutral, Upstream
from gateway.runtime import CircuitBreaker, UpstreamRuntime
from gateway.upstreams.klout import KloutAdapter


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


def test_local_answers_wait_about_as_long_as_real_round_trips() -> None:
    """Objected people are answered without the upstream, after a delay that tracks
    real lookups, so response time does not single them out."""
    config = Upstream(name="klout", adapter="klout", base_url="http://x", neutral=Neutral(score=40))
    upstream = UpstreamRuntime(
        config, KloutAdapter("klout", bytes(32)), "http://x", lambda: "k", 0.02
    )
    for _ in range(200):
        upstream.observe_round_trip(0.120)
    assert 0.115 < upstream.typical_round_trip(0.5) < 0.125
    assert upstream.typical_round_trip(0.0) < upstream.typical_round_trip(1.0)
    upstream.observe_round_trip(60.0)  # one stalled call does not poison the estimate
    assert upstream.typical_round_trip(0.5) < 0.5
