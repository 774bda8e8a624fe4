"""What the request path runs on: the seams, assembled once by the app.

Everything a request needs that outlives it lives here, passed in by
``app.create_app``: the policy holder, the audit log, the limiter, the HTTP
session, the pseudonymizer, the clock. Nothing here is a module-level global.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import aiohttp
from opentelemetry import trace

from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AnyRecord
from gateway.cache import AnswerCache
from gateway.clients import ClientKeys
from gateway.errors import ServiceUnavailable
from gateway.limits import Limiter
from gateway.policies.compile import CompiledPolicy
from gateway.policies.model import Decision, LookupContext, Upstream
from gateway.refusals import Refusals
from gateway.requestid import RequestIds
from gateway.settings import Settings
from gateway.telemetry import Metrics
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
        initial_round_trip: float,
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
        self._round_trip = initial_round_trip
        self._slots: asyncio.Semaphore | None = None
        self.connections = connections

    @property
    def slots(self) -> asyncio.Semaphore:
        """Concurrent calls to this upstream (created on the serving event loop)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.connections)
        return self._slots

    def observe_round_trip(self, seconds: float) -> None:
        """Exponentially weighted mean of real lookups, for local answers' delay."""
        self._round_trip += 0.05 * (min(seconds, 5.0) - self._round_trip)

    def typical_round_trip(self, jitter: float) -> float:
        return self._round_trip * (0.75 + 0.5 * jitter)


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
        session: aiohttp.ClientSession,
        pseudonyms: Pseudonymizer,
        client_keys: ClientKeys,
        request_ids: RequestIds | None = None,
        id_key: bytes,
        metrics: Metrics,
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
        self.session = session
        self.pseudonyms = pseudonyms
        self.people = pseudonyms.committer()
        self.request_ids = request_ids or RequestIds()
        self.client_keys = client_keys
        self.metrics = metrics
        self.cache = cache
        # Refusals of requests no client was identified for (gateway/refusals.py).
        self.refusals = refusals
        self.tracer = tracer or trace.NoOpTracer()
        # Spans cost microseconds even when no-op: the hot path skips them when off.
        self.tracing = tracer is not None and not isinstance(tracer, trace.NoOpTracer)
        self.clock = clock
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
            self.settings.limits.local_answer_delay,
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
