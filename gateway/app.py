"""``create_app(settings) -> Litestar``: assemble the seams and mount the request path.

Start-up order matters for fail-closed behaviour: keys are loaded (or the process
refuses to start), the audit log recovers and verifies its tail, the policy is
loaded and its load is audited, and only then does the proxy take requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import uvicorn
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Receive, Scope, Send

from gateway import __version__
from gateway.admin import admin_router, health_handlers
from gateway.audit.log import AuditLog
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.reconcile import OutcomeBacklog, close_orphans
from gateway.audit.record import AuditRecord, rfc3339
from gateway.audit.sequencer import SequencerClient
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.cache import AnswerCache
from gateway.clients import (
    DEMO_ADMIN_TOKEN,
    DEMO_CLIENT_KEYS,
    ClientKeys,
    key_hash,
    load_admin_hashes,
)
from gateway.errors import PROBLEM_CONTENT_TYPE, GatewayError, problem_body
from gateway.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.policies.evaluate import evaluate
from gateway.policies.reload import PolicyHolder
from gateway.proxy import Proxy
from gateway.requestid import RequestIds
from gateway.runtime import GatewayRuntime
from gateway.settings import Settings
from gateway.telemetry import Metrics, make_tracer
from gateway.transport import AiohttpTransport

log = logging.getLogger("gateway")

DEMO_POLICY = Path(__file__).parent / "demo" / "policies.yaml"


class GatewayState:
    """Everything the app built at start-up, for the admin handlers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.runtime: GatewayRuntime | None = None
        self.audit: AuditLog | SequencerClient | None = None
        self.store: AuditStore | None = None
        self.keyring: KeyRing | None = None
        self.policy: PolicyHolder | None = None
        self.pseudonyms: Pseudonymizer | None = None
        self.request_ids = RequestIds()  # the one source of request ids in this process
        self.admin_hashes: list[str] = []

    def admin_ok(self, token: str) -> bool:
        digest = key_hash(token)
        ok = False
        for known in self.admin_hashes:
            ok |= hmac.compare_digest(known, digest)
        return ok


def policy_path(settings: Settings) -> Path:
    """The policy file to serve; demo mode falls back to the embedded copy."""
    if settings.demo and not settings.policies.exists():
        return DEMO_POLICY
    return settings.policies


def create_app(settings: Settings) -> Litestar:
    state = GatewayState(settings)
    proxy_holder: dict[str, Proxy] = {}

    @asgi("/", is_mount=True, copy_scope=False, include_in_schema=False)
    async def proxy_mount(scope: Scope, receive: Receive, send: Send) -> None:
        proxy = proxy_holder.get("proxy")
        if proxy is None:  # pragma: no cover - only before start-up completes
            raise HTTPException(status_code=503, detail="starting")
        await proxy(dict(scope), receive, send)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await _start(state, stack, proxy_holder)
            yield

    return Litestar(
        route_handlers=[proxy_mount, admin_router, *health_handlers],
        lifespan=[lifespan],
        state={"gateway": state},  # type: ignore[arg-type]
        exception_handlers={
            GatewayError: _problem_response,
            HTTPException: _http_exception_response,
            Exception: _internal_error_response,
        },
        openapi_config=OpenAPIConfig(
            title="Score gateway admin API",
            version=__version__,
            description="Health, policy, audit export and subject access. Proxied upstream "
            "routes (/{upstream}/...) are the upstream APIs' own and are not described here.",
            path="/schema",
            components=Components(
                security_schemes={
                    "AdminToken": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="An admin token (gateway admin-token); client keys refused.",
                    )
                }
            ),
        ),
        request_max_body_size=settings.limits.max_request_body,
        debug=False,
        logging_config=None,  # the CLI configures JSON logs; Litestar must not reset them
    )


async def _start(
    state: GatewayState, stack: contextlib.AsyncExitStack, holder: dict[str, Proxy]
) -> None:
    settings = state.settings
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)

    keyring = KeyRing.load_or_create(data_dir)  # refuses to start on an unreadable key
    pseudonyms = Pseudonymizer.load_or_create(data_dir)
    id_key = pseudonyms.derive(b"neutral-identifiers")

    store = AuditStore.open(data_dir=data_dir, url=settings.database_url)
    stack.callback(store.close)
    audit: AuditLog | SequencerClient
    if settings.sequencer_socket is not None:
        # One sequencer process commits for every worker (gateway/audit/sequencer.py);
        # it closes the lookups a crash left open when it starts.
        audit = SequencerClient(settings.sequencer_socket)
        await audit.start()
        stack.push_async_callback(audit.close)
    else:
        audit = AuditLog(store, keyring)
        await audit.start()
        stack.push_async_callback(audit.close)
        await close_orphans(audit, store)  # lookups a crash left without an outcome
    backlog = OutcomeBacklog(audit)
    backlog.start()
    stack.push_async_callback(backlog.stop)
    state.store, state.audit, state.keyring, state.pseudonyms = store, audit, keyring, pseudonyms

    pending_loads: set[asyncio.Task[None]] = set()
    request_ids = state.request_ids

    async def audit_load(version: str | None, ok: bool, errors: tuple[str, ...]) -> None:
        record = AuditRecord(
            kind="policy.load",
            time=rfc3339(time.time()),
            request_id=request_ids.next_id(),
            decision="loaded" if ok else "rejected",
            status=None if ok else 422,
            policy_version=version,
            detail="; ".join(errors)[:4000] if errors else None,
        )
        try:
            await audit.append(record)
        except GatewayError:
            log.error("could not audit a policy load of %s", version)

    def on_load(version: str | None, ok: bool, errors: tuple[str, ...]) -> None:
        state.metrics.policy_reloads.labels("ok" if ok else "error").inc()
        if not ok:
            log.warning("policy change refused; the active policy stays: %s", "; ".join(errors))
        task = asyncio.get_running_loop().create_task(audit_load(version, ok, errors))
        pending_loads.add(task)
        task.add_done_callback(pending_loads.discard)

    policy = PolicyHolder(
        policy_path(settings), on_load=on_load, interval=settings.policy_reload_interval
    )
    await asyncio.gather(*pending_loads)  # the first load is audited before serving
    # Each start names the signing key in force, so a rotation shows in the log itself.
    await audit.append(
        AuditRecord(
            kind="gateway.start",
            time=rfc3339(time.time()),
            request_id=request_ids.next_id(),
            policy_version=policy.current.version,
            detail=f"signing key {keyring.key_id}; gateway {__version__}",
        )
    )
    policy.start()
    stack.push_async_callback(policy.stop)
    state.policy = policy

    state.admin_hashes = [*load_admin_hashes(data_dir), *settings.admin_token_hashes]

    demo_credentials: dict[str, str] = {}
    overrides = dict(settings.upstream_overrides)
    if settings.demo:
        from gateway.demo.upstream import DEMO_UPSTREAM_KEY

        state.admin_hashes.append(key_hash(DEMO_ADMIN_TOKEN))
        if "klout" not in overrides:
            url = await _start_demo_upstream(stack, settings.demo_upstream_port)
            overrides["klout"] = url
        demo_credentials["klout"] = DEMO_UPSTREAM_KEY

    client_keys = ClientKeys(data_dir, fixed=DEMO_CLIENT_KEYS if settings.demo else None)

    limiter: Limiter = (
        RedisLimiter(settings.redis_url)
        if settings.redis_url
        else MemoryLimiter(share=settings.workers)  # each worker holds its part of a limit
    )
    stack.push_async_callback(limiter.close)

    # The per-upstream slots in UpstreamRuntime bound concurrency; the connector's
    # own limit only backs them up (a wait there would not answer upstream.busy).
    connector = aiohttp.TCPConnector(
        limit=settings.limits.upstream_connections * 4, ttl_dns_cache=60, enable_cleanup_closed=True
    )
    session = aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # HTTP_PROXY and friends must never redirect score lookups
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        headers={"User-Agent": f"score-gateway/{__version__}"},
    )
    stack.push_async_callback(session.close)

    tracer, provider = make_tracer(settings.otlp_endpoint)
    if provider is not None:
        stack.callback(provider.shutdown)

    runtime = GatewayRuntime(
        settings=msgspec.structs.replace(settings, upstream_overrides=overrides),
        policy=policy,
        evaluate=evaluate,
        audit=audit,
        backlog=backlog,
        limiter=limiter,
        transport=AiohttpTransport(session, settings.limits),
        pseudonyms=pseudonyms,
        request_ids=state.request_ids,
        client_keys=client_keys,
        id_key=id_key,
        metrics=state.metrics,
        tracer=tracer,
        cache=AnswerCache(max_entries=settings.cache_entries, max_age=settings.cache_max_age)
        if settings.cache_entries > 0
        else None,
        demo_credentials=demo_credentials,
    )
    state.runtime = runtime
    holder["proxy"] = Proxy(runtime)


async def _start_demo_upstream(stack: contextlib.AsyncExitStack, port: int) -> str:
    """Serve the Klout simulator on loopback inside this process; return its URL.

    uvicorn's protocol on a plain asyncio server: a second ``uvicorn.Server`` would
    log as if it were the gateway ("Uvicorn running on ...") and reset its loggers.
    """
    from uvicorn.server import ServerState

    from gateway.demo.upstream import create_demo_upstream

    config = uvicorn.Config(
        create_demo_upstream(), log_level=None, log_config=None, access_log=False, lifespan="off"
    )
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: config.http_protocol_class(config=config, server_state=state, app_state={}),  # type: ignore[call-arg]
        host="127.0.0.1",
        port=port,
    )

    async def stop() -> None:
        server.close()
        for connection in list(state.connections):
            connection.shutdown()
        await server.wait_closed()

    stack.push_async_callback(stop)
    bound = server.sockets[0].getsockname()[1]
    log.info(
        "demo mode: simulated Klout on http://127.0.0.1:%d; client keys demo-crm-key, "
        "demo-support-key, demo-hr-key, demo-marketing-key; admin token demo-admin-token",
        bound,
    )
    return f"http://127.0.0.1:{bound}"


def _problem_response(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    request_id = request.headers.get("x-request-id-internal")
    return Response(
        content=problem_body(exc, request_id),
        status_code=exc.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=exc.headers,
    )


def _http_exception_response(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[bytes]:
    codes = {
        400: "request.invalid",
        401: "admin.unauthenticated",
        403: "admin.forbidden",
        404: "route.not_found",
        405: "request.method_not_allowed",
        413: "request.too_large",
    }
    status = exc.status_code
    error = GatewayError(
        str(exc.detail) if status < 500 else "the gateway could not handle this request",
        code=codes.get(status, "request.invalid" if status < 500 else "internal.error"),
        status=status,
        headers=dict(exc.headers or {}),
    )
    return _problem_response(request, error)


def _internal_error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s", request.url.path)
    return _problem_response(request, GatewayError("the gateway could not handle this request"))
