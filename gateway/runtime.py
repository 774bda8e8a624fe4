"""What the request path runs on: the seams, assembled once by the app.

Everything a request needs that outlives it lives here, passed in by
``app.create_app``: the policy holder, the audit log, the limiter, the HTTP
session, the pseudonymizer, the clock. Nothing here is a module-level global.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from opentelemetry import trace

from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AnyRecord
from gateway.cache import AnswerCache
from gateway.clients import ClientKeys
from gateway.errors import ServiceUnavailable
from gateway.identity import IdentityGraph
from gateway.limits import Limiter
from gateway.policies.compile import CompiledPolicy
from gateway.policies.model import Decision, LookupContext, Upstream
from gateway.refusals import Refusals
from gateway.requestid import RequestIds
from gateway.settings import Settings
from gateway.telemetry import Metrics
from gateway.transport import Transport
from gateway.upstreams.base import Adapter
from gateway.upstreams.registry import build_adapter


class AuditSink(Protocol):
    async def append(self, record: AnyRecord, index: Sequence[str] = ()) -> int: ...


class OutcomeSink(Protocol):
    def add(self, record: AnyRecord, index: Sequence[str] = ()) -> None: ...

    def __len__(self) -> int: ...

    async def flush(self) -> None: ...


class PolicySnapshot(Protocol):
    @property
    def current(self) -> CompiledPolicy: ...


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one probe through after ``cooldown``.

    While open the gateway answers 503 at once instead of piling callers onto an
    upstream that is down (reliability.md catalogue 2 #1).
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._clock() - self._opened_at >= self.cooldown:
            self._opened_at = self._clock()  # half-open: one probe per cooldown
            return True
        return False

    def refusing(self) -> bool:
        """Whether a call now would be refused, without taking the half-open probe."""
        return self._opened_at is not None and self._clock() - self._opened_at < self.cooldown

    @property
    def reset_after(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    @property
    def open(self) -> bool:
        return self._opened_at is not None

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self.threshold:
            self._opened_at = self._clock()


class UpstreamRuntime:
    """One configured upstream, ready to call: adapter, URL, credential, breaker."""

    def __init__(
        self,
        config: Upstream,
        adapter: Adapter,
        base_url: str,
        credential: Callable[[], str],
        connections: int = 100,
    ) -> None:
        self.name = config.name
        self.config = config
        self.adapter = adapter
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.key_param = config.credential.query_param
        self.key_header = config.credential.header
        self.breaker = CircuitBreaker()
        self._slots: asyncio.Semaphore | None = None
        self.connections = connections

    @property
    def slots(self) -> asyncio.Semaphore:
        """Concurrent calls to this upstream (created on the serving event loop)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.connections)
        return self._slots


class AnswerTimes:
    """How long vendor-bound lookups of each route took, as the caller saw them.

    Answers that never reach the vendor (objected people, ids the gateway issued,
    cache hits) are held until a time drawn from the recent end-to-end times of
    vendor-bound answers of the same route, so their time distribution is the
    vendor's, not a constant. The samples belong to the runtime, not to a policy
    version: a policy reload keeps them (it used to reset them to a guess).

    Before a route has ``min_samples`` of its own, the upstream's samples stand
    in; before those, ``fallback`` with +-25% jitter.
    """

    def __init__(
        self,
        fallback: float,
        *,
        size: int = 128,
        min_samples: int = 32,
        rng: random.Random | None = None,
    ) -> None:
        self.fallback = fallback
        self.size = size
        self.min_samples = min_samples
        self._rng = rng or random.Random()
        self._by_route: dict[tuple[str, str], deque[float]] = {}
        self._by_upstream: dict[str, deque[float]] = {}
        # How late a held answer leaves after its target (the event loop wakes a
        # sleeper late under load, while a vendor's answer waited for the loop
        # inside its measured time): subtracted from later waits.
        self.lateness = 0.0

    def left_at(self, target: float, actual: float) -> None:
        """A held answer meant to leave at ``target`` s left at ``actual`` s."""
        error = max(-0.05, min(0.05, actual - target))
        self.lateness = max(0.0, self.lateness + 0.05 * error)

    def observe(self, upstream: str, route: str, seconds: float) -> None:
        seconds = min(seconds, 5.0)  # one stalled call must not set the pace
        for samples in (
            self._by_route.setdefault((upstream, route), deque(maxlen=self.size)),
            self._by_upstream.setdefault(upstream, deque(maxlen=self.size)),
        ):
            samples.append(seconds)

    def draw(self, upstream: str, route: str) -> float:
        """A time for one local answer: a random recent vendor-bound time of the route."""
        for samples in (self._by_route.get((upstream, route)), self._by_upstream.get(upstream)):
            if samples is not None and len(samples) >= self.min_samples:
                return samples[self._rng.randrange(len(samples))]
        return self.fallback * (0.75 + 0.5 * self._rng.random())


class GatewayRuntime:
    def __init__(
        self,
        *,
        settings: Settings,
        policy: PolicySnapshot,
        evaluate: Callable[[LookupContext, CompiledPolicy], Decision],
        audit: AuditSink,
        backlog: OutcomeSink,
        limiter: Limiter,
        transport: Transport,
        pseudonyms: Pseudonymizer,
        client_keys: ClientKeys,
        request_ids: RequestIds | None = None,
        id_key: bytes,
        metrics: Metrics,
        identity: IdentityGraph,
        tracer: trace.Tracer | None = None,
        cache: AnswerCache | None = None,
        demo_credentials: dict[str, str] | None = None,
        refusals: Refusals | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.evaluate = evaluate
        self.audit = audit
        self.backlog = backlog
        self.limiter = limiter
        self.transport = transport
        self.pseudonyms = pseudonyms
        self.people = pseudonyms.committer()
        self.request_ids = request_ids or RequestIds()
        self.client_keys = client_keys
        self.metrics = metrics
        self.cache = cache
        # Refusals of requests no client was identified for (gateway/refusals.py).
        self.refusals = refusals
        # The identity graph: objections by person, links, issued ids (gateway.identity).
        self.identity = identity
        self.tracer = tracer or trace.NoOpTracer()
        # Spans cost microseconds even when no-op: the hot path skips them when off.
        self.tracing = tracer is not None and not isinstance(tracer, trace.NoOpTracer)
        self.clock = clock
        self.answer_times = AnswerTimes(settings.limits.local_answer_delay)
        # False while the shared limiter cannot be reached: /readyz says so.
        self.limiter_ok = True
        self._id_key = id_key
        self._demo_credentials = demo_credentials or {}
        self._upstreams: dict[tuple[str, str], UpstreamRuntime] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    def upstream(self, policy: CompiledPolicy, name: str) -> UpstreamRuntime | None:
        """The runtime of upstream ``name`` under this policy version (built once)."""
        cached = self._upstreams.get((policy.version, name))
        if cached is not None:
            return cached
        config = policy.upstreams.get(name)
        if config is None:
            return None
        base_url = self.settings.upstream_overrides.get(name, config.base_url)
        runtime = UpstreamRuntime(
            config,
            build_adapter(config, self._id_key),
            base_url,
            self._credential_reader(config),
            self.settings.limits.upstream_connections,
        )
        # The breaker and the connection slots belong to the upstream, not to a
        # policy version.
        runtime.breaker = self._breakers.setdefault(name, runtime.breaker)
        runtime._slots = self._slots.setdefault(name, runtime.slots)
        self._upstreams = {k: v for k, v in self._upstreams.items() if k[0] == policy.version}
        self._upstreams[(policy.version, name)] = runtime
        return runtime

    def _credential_reader(self, config: Upstream) -> Callable[[], str]:
        demo = self._demo_credentials.get(config.name)
        env = config.credential.env

        def read() -> str:
            if demo is not None:
                return demo
            value = os.environ.get(env) if env else None
            if not value:
                raise ServiceUnavailable(
                    f"the credential for upstream {config.name!r} is not configured "
                    f"(environment variable {env or '(none named)'})",
                    code="upstream.credential_missing",
                )
            return value

        return read
