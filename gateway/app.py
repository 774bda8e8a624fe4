"""``create_app(settings) -> Litestar``: assemble the seams and mount the request path.

Start-up order matters for fail-closed behaviour: keys are loaded (or the process
refuses to start), the audit log recovers and verifies its tail, the policy is
loaded and its load is audited, and only then does the proxy take requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import msgspec
import uvicorn
from litestar import Litestar, Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import (
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Receive,
    Scope,
    Send,
)

from gateway import __version__
from gateway.admin import ExportSlots, admin_router, health_handlers
from gateway.admin_objections import objections_router
from gateway.admin_report import report_router
from gateway.audit.graph import IdentityStore
from gateway.audit.log import AuditLog
from gateway.audit.pseudonym import Pseudonymizer, load_pseudonymizer
from gateway.audit.reconcile import OutcomeBacklog, close_orphans
from gateway.audit.record import AuditRecord, rfc3339
from gateway.audit.retention import RetentionTask
from gateway.audit.sequencer import SequencerClient
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.witnessing import WitnessPusher, parse_witness_options
from gateway.cache import AnswerCache
from gateway.clients import (
    DEMO_ADMIN_ID,
    DEMO_ADMIN_TOKEN,
    DEMO_CLIENT_KEYS,
    AdminToken,
    AdminTokens,
    ClientKeys,
    key_hash,
    legacy_admin_token,
    load_issued_keys,
)
from gateway.errors import PROBLEM_CONTENT_TYPE, GatewayError, render_problem
from gateway.h1 import H1Transport
from gateway.identity import IdentityGraph
from gateway.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.policies.apply import LoadMarks, load_marks
from gateway.policies.compile import CompiledPolicy
from gateway.policies.evaluate import evaluate
from gateway.policies.reload import PolicyHolder, PolicyLoad
from gateway.proxy import Proxy
from gateway.refusals import Refusals
from gateway.requestid import RequestIds
from gateway.runtime import GatewayRuntime
from gateway.settings import Settings
from gateway.telemetry import Metrics, make_tracer

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
        self.identity: IdentityGraph | None = None
        self.request_ids = RequestIds()  # the one source of request ids in this process
        self.admin_tokens: AdminTokens | None = None
        self.refusals: Refusals | None = None
        self.exports = ExportSlots(settings.limits.max_exports)

    def missing(self) -> list[str]:
        """What an operator must still provide before lookups can be answered, in words
        they can act on; empty when nothing is missing. ``/readyz`` answers 503 while
        it is not, and the start logs it."""
        settings = self.settings
        out: list[str] = []
        policy = self.policy.current if self.policy is not None else None
        if policy is None:
            return ["the policy is not loaded"]
        for upstream in policy.upstreams.values():
            credential = upstream.credential
            if settings.demo and upstream.name == "klout":
                continue  # the bundled simulator's key is injected in demo mode
            if not (credential.query_param or credential.header):
                continue  # this upstream takes no key
            if not credential.env:
                out.append(
                    f"upstream {upstream.name!r}: its credential names no environment "
                    "variable (credential.env in the policy)"
                )
            elif not os.environ.get(credential.env):
                out.append(
                    f"upstream {upstream.name!r}: the environment variable {credential.env} "
                    "holding its key is not set"
                )
        if not settings.demo and not self._any_client_key(policy):
            out.append(
                "no client has a key: issue one with 'gateway clients add ID --kind KIND "
                "--purpose PURPOSE'"
            )
        if self.admin_tokens is None or not self.admin_tokens.any():
            out.append("no admin token: create one with 'gateway admin-token'")
        return out

    def _any_client_key(self, policy: CompiledPolicy) -> bool:
        if any(client.key_hash for client in policy.clients.values()):
            return True
        try:
            return any(k.revoked is None for k in load_issued_keys(self.settings.data_dir).keys)
        except (OSError, msgspec.DecodeError):
            return False


def load_detail(load: PolicyLoad) -> str:
    """A policy load in plain words, for its log line and its audit record."""
    parts = []
    if load.file_digest:
        parts.append(f"file {load.file_digest}")
    if load.previous and load.previous != load.version:
        parts.append(f"previous {load.previous}")
    if load.changes:
        parts.append(f"changes: {load.changes}")
    if load.objections_only:
        parts.append("objection list only (test cases not needed)")
    elif load.ok and load.cases_passed:
        parts.append(f"{load.cases_passed} test cases pass")
    if load.errors:
        parts.append("refused: " + " | ".join(load.errors))
    return "; ".join(parts)


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

    app = GatewayApp(
        route_handlers=[
            proxy_mount,
            admin_router,
            objections_router,
            report_router,
            *health_handlers,
        ],
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
    app.route_past_framework(proxy_holder)
    return app


class GatewayApp(Litestar):
    """Litestar, with the proxied requests handed straight to the proxy.

    Every Litestar route of the gateway starts with its own first path segment
    (``admin``, ``healthz``, ``readyz``, ``metrics``, ``schema``); every other
    request reaches the proxy through the mount at ``/`` anyway. Going there
    directly skips the framework's router, its exception middleware and send
    wrapper, and the scope copy: 122 µs less CPU per lookup in the harness here
    (``bench/README.md``). The proxy answers every error itself, as a problem.
    Websockets and lifespan events still go through Litestar.
    """

    _proxy_holder: dict[str, Proxy] | None = None
    _framework_segments: frozenset[str] = frozenset()

    def route_past_framework(self, proxy_holder: dict[str, Proxy]) -> None:
        """Send requests outside the framework's own first segments to the proxy
        in ``proxy_holder`` (once start-up has put it there)."""
        segments = {r.path.split("/")[1] for r in self.routes if r.path != "/"}
        if any(not s or s.startswith("{") for s in segments):
            return  # a route that could match any first segment: keep the router
        self._framework_segments = frozenset(segments)
        self._proxy_holder = proxy_holder

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        holder = self._proxy_holder
        if holder is not None and scope["type"] == ScopeType.HTTP:
            first = cast("HTTPScope", scope)["path"][1:].partition("/")[0]
            proxy = holder.get("proxy")
            if proxy is not None and first and first not in self._framework_segments:
                await proxy(scope, receive, send)  # type: ignore[arg-type]
                return
        await super().__call__(scope, receive, send)


async def _start(
    state: GatewayState, stack: contextlib.AsyncExitStack, holder: dict[str, Proxy]
) -> None:
    settings = state.settings
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)

    keyring = KeyRing.load_or_create(data_dir)  # refuses to start on an unreadable key
    # One pseudonym key for every replica: from the operator's secret, or the data dir's.
    pseudonyms = load_pseudonymizer(data_dir, settings.pseudonym_secret_file)
    id_key = pseudonyms.derive(b"neutral-identifiers")

    store = AuditStore.open(data_dir=data_dir, url=settings.database_url)
    stack.callback(store.close)
    graph_store = IdentityStore(store.engine)
    graph_store.create()
    graph_store.bind_key(pseudonyms.check_value())  # refuses a log written under another key
    audit: AuditLog | SequencerClient
    if settings.sequencer_socket is not None:
        # One sequencer process commits for every worker (gateway/audit/sequencer.py);
        # it closes the lookups a crash left open when it starts, and pushes
        # checkpoints to the witnesses.
        audit = SequencerClient(settings.sequencer_socket)
        await audit.start()
        stack.push_async_callback(audit.close)
    else:
        pusher = await _witness_pusher(settings, store, keyring, stack)
        audit = AuditLog(store, keyring, on_checkpoint=pusher.notify if pusher else None)
        await audit.start()
        stack.push_async_callback(audit.close)  # closes before the pusher's last push
        if pusher is not None:
            pusher.start()
        await close_orphans(audit, store)  # lookups a crash left without an outcome
    backlog = OutcomeBacklog(audit, store=store)
    backlog.start()
    stack.push_async_callback(backlog.stop)
    # Stopped before the backlog and the log (the stack unwinds in reverse), so the
    # aggregates still open at shutdown are written.
    refusals = Refusals(
        audit,
        backlog,
        pseudonyms.derive(b"refusal-source"),
        state.request_ids.next_id,
        limits=settings.refusals,
    )
    refusals.start()
    stack.push_async_callback(refusals.stop)
    state.refusals = refusals
    state.store, state.audit, state.keyring, state.pseudonyms = store, audit, keyring, pseudonyms

    pending_loads: set[asyncio.Task[None]] = set()
    request_ids = state.request_ids

    loaded: list[CompiledPolicy] = []  # the policy in force before the latest load

    async def audit_load(load: PolicyLoad, marks: LoadMarks | None) -> None:
        detail = load_detail(load)
        if marks is not None and (extra := marks.detail()):
            detail = f"{detail}; {extra}" if detail else extra
        record = AuditRecord(
            kind="policy.load",
            time=rfc3339(time.time()),
            request_id=request_ids.next_id(),
            decision="loaded" if load.ok else "refused",
            status=None if load.ok else 422,
            policy_version=load.version,
            detail=detail[:4000] if detail else None,
            actor=marks.actor if marks else None,
            loosening=True if marks and marks.loosening else None,
        )
        try:
            await audit.append(record)
        except GatewayError:
            log.error("could not audit a policy load of %s", load.version)

    def on_load(load: PolicyLoad) -> None:
        state.metrics.policy_reloads.labels("ok" if load.ok else "error").inc()
        if load.ok:
            log.info("policy %s in force: %s", load.version, load_detail(load))
        elif load.version is None:
            log.error("the policy cannot go live: %s", "; ".join(load.errors))
        else:
            log.warning(
                "policy change refused; %s stays in force: %s",
                load.version,
                "; ".join(load.errors),
            )
        marks = None
        holder = state.policy
        if load.ok and holder is not None:
            # Who applied it (the apply note), what changed, and any loosening saved
            # directly to the file: for the record and GET /admin/policy.
            marks = load_marks(data_dir, loaded[-1] if loaded else None, holder.current)
            holder.loosening = marks.loosening
            loaded[:] = [holder.current]
            if marks.loosening:
                log.warning("policy loosened outside 'policy apply': %s", marks.detail())
        task = asyncio.get_running_loop().create_task(audit_load(load, marks))
        pending_loads.add(task)
        task.add_done_callback(pending_loads.discard)

    policy = PolicyHolder(
        policy_path(settings), on_load=on_load, interval=settings.policy_reload_interval
    )
    loaded[:] = [policy.current]
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
    retention = RetentionTask(audit, store, lambda: policy.current.policy.audit.retention)
    retention.start()  # prunes records older than `audit: retention`, at start and hourly
    stack.push_async_callback(retention.stop)

    # The policy file's legacy objections: list counts as objections in the graph.
    identity = IdentityGraph(
        graph_store, pseudonyms, static_objections=lambda: policy.current.objections
    )
    await identity.start()
    stack.push_async_callback(identity.close)
    state.identity = identity

    # Tokens issued with `gateway admin-token` are re-read while running; these are fixed.
    fixed_admins = [legacy_admin_token(digest) for digest in settings.admin_token_hashes]
    if settings.demo:
        fixed_admins.append(
            AdminToken(id=DEMO_ADMIN_ID, role="operator", key_hash=key_hash(DEMO_ADMIN_TOKEN))
        )
    state.admin_tokens = AdminTokens(data_dir, fixed=fixed_admins)

    demo_credentials: dict[str, str] = {}
    overrides = dict(settings.upstream_overrides)
    if settings.demo:
        from gateway.demo.upstream import DEMO_UPSTREAM_KEY

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

    # The per-upstream slots in UpstreamRuntime bound concurrency; the transport
    # keeps idle connections for reuse. It reads no proxy or other setting from
    # the environment: HTTP_PROXY and friends must never redirect score lookups.
    transport = H1Transport(settings.limits)
    stack.push_async_callback(transport.close)

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
        transport=transport,
        pseudonyms=pseudonyms,
        request_ids=state.request_ids,
        client_keys=client_keys,
        id_key=id_key,
        identity=identity,
        metrics=state.metrics,
        tracer=tracer,
        cache=AnswerCache(max_entries=settings.cache_entries, max_age=settings.cache_max_age)
        if settings.cache_entries > 0
        else None,
        demo_credentials=demo_credentials,
        refusals=refusals,
    )
    state.runtime = runtime
    holder["proxy"] = Proxy(runtime)
    missing = state.missing()
    if missing:
        # Started, but not ready: /readyz answers 503 with the same list until each
        # piece is provided (keys and tokens are picked up without a restart).
        log.warning("not ready to answer lookups; missing: %s", " | ".join(missing))


async def _witness_pusher(
    settings: Settings, store: AuditStore, keyring: KeyRing, stack: contextlib.AsyncExitStack
) -> WitnessPusher | None:
    """The task that pushes checkpoints to ``--witness`` witnesses, if any are set."""
    if not settings.witnesses:
        return None
    endpoints = parse_witness_options(settings.witnesses)
    # A session of its own: witness calls never take an upstream connection slot.
    session = aiohttp.ClientSession(trust_env=False)
    stack.push_async_callback(session.close)
    pusher = WitnessPusher(store, keyring, endpoints, session)
    stack.push_async_callback(pusher.stop)
    log.info("pushing checkpoints to witnesses %s", ", ".join(e.key.name for e in endpoints))
    return pusher


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


_FRAMEWORK_HEADERS = frozenset({b"content-type", b"content-length", b"x-request-id"})


def _problem_response(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    # The id the request_id middleware made for this request; never anything the
    # caller sent (a forged X-Request-Id* header is not a request id of ours).
    request_id = request.scope.get("state", {}).get("request_id")
    made_here = not isinstance(request_id, str)
    if made_here:  # a route outside the middleware: this answer still gets an id
        request_id = request.app.state["gateway"].request_ids.next_id()
    status, headers, body = render_problem(exc, request_id)
    skip = _FRAMEWORK_HEADERS - ({b"x-request-id"} if made_here else set())
    return Response(
        content=body,
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        # Litestar writes content-type and content-length, the request_id middleware
        # x-request-id; the error's own (WWW-Authenticate, Retry-After) go with it.
        headers={k.decode(): v.decode() for k, v in headers if k not in skip},
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
