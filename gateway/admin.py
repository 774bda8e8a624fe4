"""``/admin`` (admin credentials), ``/healthz``, ``/readyz`` and ``/metrics``.

Admin tokens are separate from client keys: a client key never opens these
routes, and an admin token never looks up a score. Each route names the role it
needs and the act it is on the record as (:func:`admin_act`); :func:`admin_guard`
refuses a token of another role with 403 ``admin.forbidden_role`` (on the record).

A new admin route, in three lines::

    @get("/report", opt=admin_act("report", "auditor"), responses=ADMIN_ERRORS)
    async def report(request: Request[Any, Any, Any], ...) -> Report:
        ...                                    # refuse with a GatewayError as usual
        await audit_admin_act(request, people=refs, index=pseudonyms, detail="...")
        return answer

``audit_admin_act`` writes ``admin.report`` (decision 0001 §6) under the token's id
and role and the gateway's request id, before the answer leaves, and fails closed
(503 ``audit.unavailable``). Audit a refusal inside the handler the same way, with
``status=error.status, detail=error.code``. Add the route to ``admin_router``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.background_tasks import BackgroundTask
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromQuery, QueryParameter, RawBody
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit.checkpoint import b64
from gateway.audit.export import iter_export_chunks
from gateway.audit.lookup_csv import iter_csv_chunks
from gateway.audit.lookups import iter_store_records
from gateway.audit.proofs import consistency
from gateway.audit.record import AuditRecord, PersonRef, rfc3339
from gateway.audit.subject import subject_records
from gateway.clients import AdminToken, Role, role_allows
from gateway.errors import (
    PROBLEM_CONTENT_TYPE,
    AuditUnavailable,
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    Problem,
    ServiceUnavailable,
    Unauthenticated,
    render_problem,
)
from gateway.headers import InboundHeaders
from gateway.policies.admission import admit_policy
from gateway.policies.evaluate import evaluate
from gateway.policies.loader import PolicyError
from gateway.policies.model import OUTCOMES, LookupContext, Outcome
from gateway.policies.reload import PolicyStatus
from gateway.policies.testing import decision_kind, route_template
from gateway.upstreams.registry import subject_pseudonyms

if TYPE_CHECKING:
    from gateway.app import GatewayState


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=PROBLEM_CONTENT_TYPE,
        generate_examples=False,
    )


ADMIN_ERRORS = {
    400: _problem("A parameter or the body is not valid (request.invalid, request.invalid_json)"),
    401: _problem("No admin token, or not a valid one (admin.unauthenticated)"),
    403: _problem(
        "A client key was sent (admin.forbidden), or the token's role does not allow this "
        "act (admin.forbidden_role)"
    ),
}

RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"
SECURITY: list[dict[str, list[str]]] = [{"AdminToken": []}]


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every admin and health answer an ``X-Request-Id`` (the proxy sets its own),
    and refuse a missing, repeated or invalid Host as the proxy does."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        # Only the gateway makes request ids (decision 0001 §2); a caller's
        # X-Request-Id* headers are never read.
        gateway: GatewayState = scope["litestar_app"].state["gateway"]
        request_id = gateway.request_ids.next_id()
        scope.setdefault("state", {})["request_id"] = request_id
        try:
            InboundHeaders(scope["headers"]).check_host(scope.get("http_version", "1.1"))
        except GatewayError as error:
            if gateway.refusals is not None:  # nobody identified: a stranger's refusal
                client = scope.get("client")
                peer = str(client[0]) if client else "-"
                gateway.refusals.record(peer, request_id, error.code, error.status)
            status, headers, body = render_problem(error, request_id)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def gateway_state(connection: ASGIConnection[Any, Any, Any, Any]) -> GatewayState:
    state: GatewayState = connection.app.state["gateway"]
    return state


def admin_act(act: str, role: Role | None) -> dict[str, Any]:
    """Route options naming the act (audit kind ``admin.<act>``) and the role it needs
    (``None``: any admin role). Use as ``@get(..., opt=admin_act("report", "auditor"))``."""
    return {"admin_act": act, "admin_role": role}


async def admin_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Who is asking, and may they? The token found is kept for the handler's audit
    record (:func:`admin_of`); a route without :func:`admin_act` options needs operator.

    A refused role is on the record (``admin.<act>``, status 403) under the token's
    id; a request without a valid token is a stranger's, counted in the refusal
    aggregates like a lookup with a wrong key."""
    try:
        _check_admin(connection, handler)
    except GatewayError as error:
        state = gateway_state(connection)
        admin = connection.scope.get("state", {}).get("admin")
        if admin is not None:
            with contextlib.suppress(GatewayError):
                await record_admin_act(
                    state,
                    handler.opt.get("admin_act", "unknown"),
                    admin,
                    request_id=request_id_of(connection),
                    status=error.status,
                    detail=error.code,
                )
        elif state.refusals is not None:
            client = connection.scope.get("client")
            state.refusals.record(
                str(client[0]) if client else "-",
                request_id_of(connection),
                error.code,
                error.status,
            )
        raise


def _check_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    authorization = connection.headers.get("authorization")
    if not authorization:
        raise Unauthenticated("admin credentials are required", code="admin.unauthenticated")
    scheme, _sep, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("admin credentials are a Bearer token", code="admin.unauthenticated")
    state = gateway_state(connection)
    admin = state.admin_tokens.identify(token.strip()) if state.admin_tokens is not None else None
    if admin is None:
        runtime = state.runtime
        if (
            runtime is not None
            and runtime.client_keys.identify(token.strip(), runtime.policy.current) is not None
        ):
            raise Forbidden("client keys do not open admin endpoints", code="admin.forbidden")
        raise Unauthenticated("the admin token is not valid", code="admin.unauthenticated")
    connection.scope.setdefault("state", {})["admin"] = admin
    needed: Role | None = handler.opt.get("admin_role", "operator")
    if not role_allows(admin.role, needed):
        raise Forbidden(
            f"this needs an admin token of role {needed!r} (or 'operator'); "
            f"token {admin.id} has role {admin.role!r}",
            code="admin.forbidden_role",
        )


def admin_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AdminToken:
    """The admin token :func:`admin_guard` accepted for this request."""
    admin: AdminToken = connection.scope["state"]["admin"]
    return admin


def request_id_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The id the gateway gave this request (:func:`request_id_middleware`)."""
    request_id: str = connection.scope["state"]["request_id"]
    return request_id


async def audit_admin_act(
    request: ASGIConnection[Any, Any, Any, Any],
    *,
    status: int = 200,
    people: Sequence[PersonRef] = (),
    index: Sequence[str] = (),
    detail: str | None = None,
) -> None:
    """Put this request's admin act on the record, before its answer leaves.

    The act is the route's (:func:`admin_act`), the actor the token's id and role
    (never the token), the request id the gateway's. Fails closed: if the store
    cannot take the record, the act is refused with 503 ``audit.unavailable``,
    as a lookup would be. ``people`` are commitments only (``PersonCommitter.refs``),
    ``index`` their pseudonyms for the store's subject index (never in the record);
    ``detail`` must hold nothing personal.
    """
    await record_admin_act(
        gateway_state(request),
        request.route_handler.opt["admin_act"],
        admin_of(request),
        request_id=request_id_of(request),
        status=status,
        people=people,
        index=index,
        detail=detail,
    )


async def record_admin_act(
    state: GatewayState,
    act: str,
    admin: AdminToken,
    *,
    request_id: str,
    status: int,
    people: Sequence[PersonRef] = (),
    index: Sequence[str] = (),
    detail: str | None = None,
) -> None:
    """Append an ``admin.<act>`` record (decision 0001 §6); raises ``AuditUnavailable``."""
    if state.audit is None:
        raise _unavailable("the audit log")
    record = AuditRecord(
        kind=f"admin.{act}",
        time=rfc3339(time.time()),
        request_id=request_id,
        actor=admin.id,
        role=admin.role,
        status=status,
        people=list(people),
        detail=detail,
    )
    try:
        await state.audit.append(record, index)
    except GatewayError:
        raise
    except Exception as exc:  # any store failure must fail closed
        raise AuditUnavailable("the audit log cannot take records; admin acts wait") from exc


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    ready: bool
    policy: bool
    audit: bool
    keys: bool
    policy_version: str | None = None
    # What the operator must still provide (an upstream's key, a client key, an
    # admin token), in words they can act on; ready only when empty.
    missing: list[str] = []
    disk: bool = True
    reasons: list[str] = []
    limiter: bool = True


def disk_space_ok(state: GatewayState) -> tuple[bool, str | None]:
    """Whether the data directory keeps ``min_free_disk`` free; updates the metrics.

    A full disk makes the audit store refuse records and the gateway fail closed for
    everyone; this says so while there is still room to act.
    """
    settings = state.settings
    try:
        free = shutil.disk_usage(settings.data_dir).free
    except OSError as exc:
        state.metrics.data_dir_low_space.set(1)
        return False, f"cannot read the free space of the data directory: {exc.strerror}"
    state.metrics.data_dir_free_bytes.set(free)
    minimum = settings.limits.min_free_disk
    low = free < minimum
    state.metrics.data_dir_low_space.set(1 if low else 0)
    if low:
        return False, (
            f"the data directory's filesystem has {free // 2**20} MiB free, under the "
            f"watermark of {minimum // 2**20} MiB (min_free_disk)"
        )
    return True, None


@get("/healthz", summary="Liveness", tags=["health"], middleware=[request_id_middleware])
async def healthz() -> Health:
    """The process is alive and serving HTTP."""
    return Health(status="ok")


@get(
    "/readyz",
    summary="Readiness",
    tags=["health"],
    middleware=[request_id_middleware],
)
async def readyz(request: Request[Any, Any, Any]) -> Response[Readiness]:
    """Ready when the policy is loaded, the signing keys are usable, the audit store
    takes records and its disk keeps ``min_free_disk`` free, the rate limiter
    answers, and nothing an operator must provide is missing (each upstream's key, a
    client key, an admin token: listed in ``missing``); 503 otherwise, with the
    reasons."""
    state = gateway_state(request)
    policy_ok = state.policy is not None and state.policy.current is not None
    audit_ok = state.audit is not None and state.audit.healthy()
    keys_ok = state.keyring is not None
    missing = state.missing()
    disk_ok, disk_reason = disk_space_ok(state)
    runtime = state.runtime
    if runtime is not None and not runtime.limiter_ok:
        runtime.limiter_ok = await runtime.limiter.ping()
    limiter_ok = runtime is None or runtime.limiter_ok
    body = Readiness(
        ready=policy_ok and audit_ok and keys_ok and disk_ok and limiter_ok and not missing,
        limiter=limiter_ok,
        policy=policy_ok,
        audit=audit_ok,
        keys=keys_ok,
        policy_version=state.policy.current.version if state.policy is not None else None,
        missing=missing,
        disk=disk_ok,
        reasons=[disk_reason] if disk_reason else [],
    )
    return Response(body, status_code=200 if body.ready else 503)


@get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["health"],
    guards=[admin_guard],
    opt=admin_act("metrics", "operator"),
    security=SECURITY,
    middleware=[request_id_middleware],
    media_type="text/plain; version=0.0.4",
    responses=ADMIN_ERRORS,
)
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    """Lookups by decision, rule, purpose and upstream; upstream and audit latency;
    audit queue depth; policy reloads. No subject identifiers."""
    state = gateway_state(request)
    disk_space_ok(state)
    if state.audit is not None:
        stats = state.audit.stats
        state.metrics.audit_queue_depth.set(stats.queue_depth)
        state.metrics.audit_commit_seconds.set(stats.last_commit_latency)
    return state.metrics.render()


health_handlers = [healthz, readyz, metrics]


def _only_query(request: Request[Any, Any, Any], allowed: set[str]) -> None:
    """Refuse parameters an operation does not take, rather than silently ignore
    them (a misspelled ``untill=`` must not export everything)."""
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(u[:40] for u in unknown[:5])}",
            code="request.unknown_parameter",
        )


def _unavailable(what: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"{what} is not ready", code="gateway.starting")


class PolicyProblem(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    line: int
    col: int
    file: str | None = None  # a test case file, when the problem is a failing case


class Validation(msgspec.Struct):
    valid: bool
    version: str | None = None
    problems: list[PolicyProblem] = []
    cases_passed: int = 0


class ExplainRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    client: str
    upstream: str
    purpose: str | None = None
    route: str | None = None
    path: str | None = None
    outcome: Outcome | None = None
    attributes: dict[str, str] = {}


T = TypeVar("T")


def decode_strict_json(body: bytes, type_: type[T]) -> T:
    """Decode a JSON body into ``type_``; refuse, as 400, what msgspec alone would
    accept or choke on: duplicate keys (the last would silently win), invalid UTF-8,
    and nesting deep enough to exhaust the stack."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise BadRequest("a JSON object repeats a key", code="request.duplicate_field")
        return dict(pairs)

    try:
        raw = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates)
        return msgspec.convert(raw, type_)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest("the body is not valid UTF-8 JSON", code="request.invalid_json") from None
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc), code="request.invalid_json") from None


def _string(**kwargs: Any) -> Schema:
    return Schema(type=OpenAPIType.STRING, **kwargs)


@dataclass
class ExplainOperation(Operation):
    """Documents the JSON body that ``explain_policy`` decodes itself (strictly)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["client", "upstream"],
                        additional_properties=False,
                        properties={
                            "client": _string(description="a client id of the policy"),
                            "upstream": _string(description="an upstream name of the policy"),
                            "purpose": _string(description="default: the client's own"),
                            "route": _string(description="a route template"),
                            "path": _string(description="or a path, mapped to its template"),
                            "outcome": _string(enum=list(OUTCOMES)),
                            "attributes": Schema(
                                type=OpenAPIType.OBJECT, additional_properties=_string()
                            ),
                        },
                    )
                )
            },
        )


class ExplainedRule(msgspec.Struct):
    id: str
    action: str
    reason: str
    source: str
    line: int | None


class Explanation(msgspec.Struct, kw_only=True):
    client: str
    upstream: str
    decision: str
    policy_version: str
    route: str
    purpose: str
    matched: list[ExplainedRule]
    deny_rule: str | None = None
    redact: list[str] = []
    coarsen: bool = False


@get(
    "/policy",
    summary="The active policy",
    operation_id="getPolicy",
    responses=ADMIN_ERRORS,
    opt=admin_act("policy_view", None),
)
async def get_policy(request: Request[Any, Any, Any]) -> PolicyStatus:
    """The active policy's version, file, load time and any refused change."""
    holder = gateway_state(request).policy
    if holder is None:
        raise _unavailable("the policy")
    return holder.status()


@post(
    "/policy/validate",
    summary="Check a policy file without loading it",
    operation_id="validatePolicy",
    responses=ADMIN_ERRORS,
    opt=admin_act("validate", "policy"),
    status_code=200,
    request_max_body_size=1024 * 1024,
)
async def validate_policy(request: Request[Any, Any, Any], body: RawBody) -> Validation:
    """Send the YAML text of a policy file; learn whether a running gateway would put it
    live: every mistake with its line and column, and every failing test case (the
    same check as the reload and ``gateway policy check``). Never a 5xx: whatever the
    text holds is an answer about the text."""
    result = await _validate(request, body)
    detail = (
        f"valid, version {result.version}"
        if result.valid
        else f"invalid, {len(result.problems)} problem(s): "
        + ", ".join(sorted({p.code for p in result.problems}))[:500]
    )
    await audit_admin_act(request, detail=detail)
    return result


async def _validate(request: Request[Any, Any, Any], body: bytes) -> Validation:
    holder = gateway_state(request).policy
    path = holder.path if holder is not None else Path("policies.yaml")
    previous = holder.current if holder is not None else None
    try:
        admitted = await asyncio.to_thread(
            admit_policy, body, path, filename=path.name, previous=previous
        )
    except PolicyError as exc:
        return Validation(
            valid=False,
            problems=[
                PolicyProblem(code=p.code, message=p.message, line=p.line, col=p.col, file=p.file)
                for p in exc.problems
            ],
        )
    return Validation(
        valid=True, version=admitted.policy.version, cases_passed=admitted.cases_passed
    )


@post(
    "/policy/explain",
    summary="Explain a decision",
    operation_id="explainPolicy",
    opt=admin_act("explain", "policy"),
    status_code=200,
    request_max_body_size=64 * 1024,
    operation_class=ExplainOperation,
    responses={
        **ADMIN_ERRORS,
        400: _problem("The body is not a valid explain request, or names no purpose"),
        404: _problem("No such client or upstream in the active policy"),
    },
)
async def explain_policy(request: Request[Any, Any, Any], body: RawBody) -> Explanation:
    """Decide a described lookup under the active policy and list every rule that matched."""
    try:
        explanation = _explain(request, body)
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    # Names from the policy only: client, upstream, route template and the decision.
    await audit_admin_act(
        request,
        detail=f"{explanation.client} at {explanation.upstream} {explanation.route} "
        f"for {explanation.purpose}: {explanation.decision}",
    )
    return explanation


def _explain(request: Request[Any, Any, Any], body: bytes) -> Explanation:
    data = decode_strict_json(body, ExplainRequest)
    holder = gateway_state(request).policy
    if holder is None:
        raise _unavailable("the policy")
    policy = holder.current
    client = policy.clients.get(data.client)
    if client is None:
        raise NotFound("no client of that id in the active policy", code="client.unknown")
    if data.upstream not in policy.upstreams:
        raise NotFound("no upstream of that name in the active policy", code="upstream.unknown")
    purpose = data.purpose or client.default_purpose
    if purpose is None:
        raise BadRequest("give a purpose: the client has no default", code="purpose.missing")
    if data.route is None and data.path is None:
        raise BadRequest("give the route template or a path", code="request.invalid")
    route = data.route or route_template(policy, data.upstream, data.path or "")
    context = LookupContext(
        client=client.id,
        client_kind=client.kind,
        purpose=purpose,
        upstream=data.upstream,
        route=route,
        attributes=data.attributes,
        outcome=data.outcome,
    )
    decision = evaluate(context, policy)
    return Explanation(
        client=client.id,
        upstream=data.upstream,
        decision=decision_kind(decision),
        policy_version=decision.policy_version,
        route=route,
        purpose=purpose,
        matched=[
            ExplainedRule(m.id, m.action, m.reason, m.source, m.line) for m in decision.matched
        ],
        deny_rule=decision.deny.id if decision.deny else None,
        redact=list(decision.redact),
        coarsen=decision.coarsen,
    )


class PublicKeys(msgspec.Struct):
    active_key_id: str
    pem: str


@get(
    "/audit/public-key",
    summary="Public keys that verify audit exports",
    operation_id="auditPublicKeys",
    responses=ADMIN_ERRORS,
    opt=admin_act("public_key", None),
)
async def audit_public_key(request: Request[Any, Any, Any]) -> PublicKeys:
    """Every Ed25519 public key of this log (PEM), including rotated ones; pin them
    out of band, never trust a key that arrives with an export."""
    keyring = gateway_state(request).keyring
    if keyring is None:
        raise _unavailable("the key ring")
    return PublicKeys(active_key_id=keyring.key_id, pem=keyring.public_pems().decode())


@get(
    "/audit/export",
    summary="Export the audit log",
    operation_id="auditExport",
    responses={
        **ADMIN_ERRORS,
        503: _problem(
            "Limits.max_exports exports are already streaming (export.busy, with "
            "Retry-After), or the audit log cannot take the export's record (audit.unavailable)"
        ),
    },
    opt=admin_act("export", "auditor"),
    media_type="application/x-ndjson",
)
async def audit_export(
    request: Request[Any, Any, Any],
    since: Annotated[
        str | None, QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, inclusive")
    ] = None,
    until: Annotated[
        str | None, QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, exclusive")
    ] = None,
    format: FromQuery[Literal["jsonl", "csv"]] = "jsonl",
    records: FromQuery[bool] = False,
) -> Stream:
    """A signed JSONL export (records, checkpoints, and a final seal line; verify it with
    ``gateway audit verify``), or CSV for spreadsheets (not verifiable). Streams in
    constant memory."""
    try:
        _only_query(request, {"since", "until", "format", "records"})
        state = gateway_state(request)
        if state.store is None or state.keyring is None:
            raise _unavailable("the audit store")
        state.exports.take()
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    try:
        await audit_admin_act(request, detail=f"{format} since {since or '-'} until {until or '-'}")
    except GatewayError:
        state.exports.running -= 1
        raise
    store, keyring = state.store, state.keyring
    if state.refusals is not None:
        await state.refusals.written()  # refusals answered so far are in this export
    if format == "csv":
        rows = iter_csv_chunks(
            iter_store_records(store), raw_records=records, since=since, until=until
        )
        export = ExportStream(rows, state.exports)
        return Stream(
            export.chunks(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
            background=BackgroundTask(export.finish),
        )
    chunks = iter_export_chunks(store, keyring, since=since, until=until, chunk_size=64 * 1024)
    export = ExportStream(chunks, state.exports)
    return Stream(
        export.chunks(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
        background=BackgroundTask(export.finish),
    )


class ExportSlots:
    """At most ``limit`` exports stream at once; past it 503 ``export.busy``.

    Each export holds a store cursor's chunk of rows and a thread while it streams;
    bounding how many run bounds that memory, whatever readers do. The transport's
    backpressure makes a slow reader slow its own export down, and the server's
    write deadline (``Limits.write_timeout``) cuts off one that stops reading.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    def take(self) -> None:
        if self.running >= self.limit:
            raise ServiceUnavailable(
                f"{self.limit} exports are already streaming; retry when one is done",
                code="export.busy",
                headers={"Retry-After": "5"},
            )
        self.running += 1


class ExportStream:
    """One export: chunks made in a worker thread (store reads block), each sent
    before the next is made, so the export advances only as fast as its reader takes
    it. :meth:`finish` runs after the response however it ended (done, reader gone,
    cut off by the write deadline): it ends the store reads and gives the slot back."""

    def __init__(self, chunks: Iterator[bytes], slots: ExportSlots) -> None:
        self._chunks = chunks  # the caller took a slot (ExportSlots.take)
        self._slots = slots
        self._pending: asyncio.Future[bytes | None] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            self._pending = loop.run_in_executor(None, next, self._chunks, None)
            # Shielded: a disconnect cancels the wait, not the thread's next(); finish()
            # waits for that to return before closing the generator.
            chunk = await asyncio.shield(self._pending)
            if chunk is None:
                return
            yield chunk

    async def finish(self) -> None:
        try:
            if self._pending is not None:
                await asyncio.wait([self._pending])
            close = getattr(self._chunks, "close", None)
            if close is not None:
                await asyncio.to_thread(close)
        finally:
            self._slots.running -= 1
        if self._slots.running == 0:
            await asyncio.to_thread(release_freed_memory)


def release_freed_memory() -> None:
    """Hand memory freed by finished exports back to the system.

    glibc keeps what worker threads freed in their own arenas, so after a burst
    of exports the process would stay at its peak size (issue 10: 118 -> 249 MB
    that never came back). ``malloc_trim`` returns it; elsewhere this does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ConsistencyProof(msgspec.Struct, kw_only=True):
    """RFC 6962 section 2.1.2: the tree of ``to`` leaves extends the tree of ``from``."""

    from_: int = msgspec.field(name="from")
    to: int
    from_root: str  # base64, compare with a checkpoint of size ``from`` you hold
    to_root: str
    proof: list[str]  # base64 hashes, in the order RFC 6962 / C2SP tlog-witness use


@get(
    "/audit/consistency",
    summary="Consistency proof between two tree sizes",
    operation_id="auditConsistency",
    opt=admin_act("consistency", "auditor"),
    responses={
        **ADMIN_ERRORS,
        400: _problem("from or to missing or not a non-negative integer (request.invalid)"),
        404: _problem(
            "No proof exists: not 0 <= from <= to <= the log's size (audit.range_invalid)"
        ),
    },
)
async def audit_consistency(
    request: Request[Any, Any, Any],
    from_: Annotated[int, QueryParameter(name="from", ge=0, description="the older size")],
    to: Annotated[int, QueryParameter(ge=0, description="the newer size, at most the log's")],
) -> ConsistencyProof:
    """Proof that the log at size ``to`` extends the log at size ``from``. Check it
    against two checkpoints you already hold (``gateway audit verify`` does this for
    two exports offline); a log that rewrote history cannot produce one."""
    _only_query(request, {"from", "to"})
    state = gateway_state(request)
    if state.store is None:
        raise _unavailable("the audit store")
    store = state.store
    size = await asyncio.to_thread(lambda: store.head().size)
    if not from_ <= to <= size:
        # 404, not 400: the request is well formed, but no such proof exists (yet).
        raise NotFound(
            f"no proof exists: need 0 <= from <= to <= {size} (the log's size), "
            f"got from={from_} to={to}",
            code="audit.range_invalid",
        )
    proof, old_root, new_root = await asyncio.to_thread(consistency, store, from_, to)
    return ConsistencyProof(
        from_=from_, to=to, from_root=b64(old_root), to_root=b64(new_root),
        proof=[b64(h) for h in proof],
    )  # fmt: skip


class SubjectRecord(msgspec.Struct, frozen=True):
    """One record about the person: its leaf index and its fields (format 1 or 2;
    ``v`` tells which). A format-2 outcome refers to its intent by ``request_id``."""

    seq: int
    record: dict[str, Any]


class SubjectAccess(msgspec.Struct):
    upstream: str
    records: list[SubjectRecord]


@get(
    "/audit/subject",
    summary="Every record about one person",
    operation_id="auditSubject",
    opt=admin_act("subject_access", "auditor"),
    responses={
        **ADMIN_ERRORS,
        404: _problem("No such upstream in the active policy (upstream.unknown)"),
    },
)
async def audit_subject(
    request: Request[Any, Any, Any],
    upstream: Annotated[str, QueryParameter(min_length=1, max_length=64)],
    subject: Annotated[str, QueryParameter(min_length=1, max_length=256)],
) -> SubjectAccess:
    """For a GDPR Art. 15 answer: every lookup about this person at this upstream, by
    which client, when, for what purpose, and what was decided. The identifier is
    turned into its keyed pseudonyms here and is neither stored nor logged."""
    state = gateway_state(request)
    try:
        _only_query(request, {"upstream", "subject"})
        if state.store is None or state.policy is None or state.pseudonyms is None:
            raise _unavailable("the audit store")
        config = state.policy.current.upstreams.get(upstream)
        if config is None:
            raise NotFound("no upstream of that name in the active policy", code="upstream.unknown")
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    pseudonyms = subject_pseudonyms(config, state.pseudonyms, subject)
    store = state.store
    committer = state.pseudonyms.committer()
    if state.identity is not None and pseudonyms:  # a person is the unit: every linked id
        pseudonyms = await asyncio.to_thread(state.identity.store.expand, pseudonyms)
    entries = await asyncio.to_thread(
        lambda: (
            list(subject_records(store, pseudonyms, committer, upstream=upstream))
            if pseudonyms
            else []
        )
    )
    # A subject access request is itself processing of the person's data: on the
    # record before the answer leaves, the person as commitments only (and in the
    # subject index, so their own later request shows who asked about them).
    people = committer.refs(request_id_of(request), [(p, "asked", None) for p in pseudonyms])
    await audit_admin_act(
        request,
        people=people,
        index=pseudonyms,
        detail=f"{len(entries)} record(s) at {upstream}",
    )
    return SubjectAccess(
        upstream=upstream,
        records=[SubjectRecord(e.seq, msgspec.to_builtins(e.record)) for e in entries],
    )


admin_router = Router(
    path="/admin",
    route_handlers=[
        get_policy,
        validate_policy,
        explain_policy,
        audit_public_key,
        audit_export,
        audit_subject,
        audit_consistency,
    ],
    guards=[admin_guard],
    security=SECURITY,
    middleware=[request_id_middleware],
    tags=["admin"],
)
