"""The request path alone: a real ``Proxy`` on a real audit log, with an in-memory transport.

No server and no simulator: the upstream is a :class:`~gateway.transport.MockTransport`
answering from a function, so each step of the path can be exercised in
milliseconds. End-to-end tests (tests/support/gateway.py) keep the real servers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.graph import IdentityStore
from gateway.audit.log import AuditLog
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.reconcile import OutcomeBacklog
from gateway.audit.record import AnyRecord, decode_record
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.clients import DEMO_CLIENT_KEYS, ClientKeys
from gateway.identity import IdentityGraph
from gateway.limits import Limiter, MemoryLimiter
from gateway.policies.compile import CompiledPolicy, load_policy
from gateway.policies.evaluate import evaluate
from gateway.proxy import Proxy
from gateway.runtime import GatewayRuntime
from gateway.settings import Limits, Settings
from gateway.telemetry import Metrics
from gateway.transport import MockTransport, Transport
from tests.support.gateway import SHIPPED_POLICY


@dataclass
class FixedPolicy:
    """A policy snapshot that never changes (the reload machinery is not under test)."""

    current: CompiledPolicy


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class ProxyRig:
    proxy: Proxy
    runtime: GatewayRuntime
    store: AuditStore
    audit: AuditLog
    transport: Transport
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def get(self, target: str, headers: dict[str, str] | None = None) -> Answer:
        """Send ``GET target`` through the proxy as an ASGI request."""
        path, _, query = target.partition("?")
        scope: dict[str, Any] = {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(b"host", b"gateway.test")]
            + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        }
        messages: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await self.proxy(scope, receive, send)
        start, body = messages
        return Answer(
            status=start["status"],
            headers={k.decode(): v.decode() for k, v in start["headers"]},
            body=body["body"],
        )

    def records(self) -> list[AnyRecord]:
        """Every record the lookups so far committed, in log order."""
        return [decode_record(row.body) for row in self.store.iter_records(0, self.audit.size)]


@contextlib.asynccontextmanager
async def proxy_rig(
    data_dir: Path,
    handler: Callable[..., Any] | Transport,
    *,
    policy: Path = SHIPPED_POLICY,
    limiter: Limiter | None = None,
    limits: Limits | None = None,
) -> AsyncIterator[ProxyRig]:
    """A ``Proxy`` over ``handler`` (a ``MockTransport`` handler, or any transport)."""
    transport = handler if hasattr(handler, "send") else MockTransport(handler)
    settings = Settings(
        demo=True,
        data_dir=data_dir,
        policies=policy,
        upstream_overrides={"klout": "http://klout.test"},
        limits=limits or Limits(local_answer_delay=0.001),
    )
    keyring = KeyRing.load_or_create(data_dir)
    pseudonyms = Pseudonymizer.load_or_create(data_dir)
    store = AuditStore.open(data_dir=data_dir)
    audit = AuditLog(store, keyring)
    await audit.start()
    backlog = OutcomeBacklog(audit)
    limiter = limiter or MemoryLimiter()
    fixed = FixedPolicy(load_policy(policy))
    graph = IdentityStore(store.engine)
    graph.create()
    identity = IdentityGraph(graph, pseudonyms, static_objections=lambda: fixed.current.objections)
    await identity.start()
    runtime = GatewayRuntime(
        settings=settings,
        policy=fixed,
        evaluate=evaluate,
        audit=audit,
        backlog=backlog,
        limiter=limiter,
        transport=transport,
        pseudonyms=pseudonyms,
        client_keys=ClientKeys(data_dir, fixed=DEMO_CLIENT_KEYS),
        id_key=pseudonyms.derive(b"neutral-identifiers"),
        identity=identity,
        metrics=Metrics(),
        demo_credentials={"klout": "upstream-key"},
    )
    try:
        yield ProxyRig(Proxy(runtime), runtime, store, audit, transport)
    finally:
        await identity.close()
        await audit.close()
        await limiter.close()
        store.close()
