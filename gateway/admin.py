"""``/admin`` (admin credentials), ``/healthz``, ``/readyz`` and ``/metrics``.

Admin tokens are separate from client keys: a client key never opens these
routes, and an admin token never looks up a score.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromQuery, QueryParameter, RawBody
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit.export import iter_export_chunks
from gateway.audit.lookup_csv import iter_csv_chunks
from gateway.audit.lookups import iter_store_records
from gateway.audit.subject import subject_records
from gateway.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    Problem,
    ServiceUnavailable,
    Unauthenticated,
    problem_body,
)
from gateway.headers import InboundHeaders
from gateway.policies.evaluate import evaluate
from gateway.policies.loader import PolicyError, parse_policy
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
    403: _problem("A client key was sent: client keys never open admin routes (admin.forbidden)"),
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
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        try:
            InboundHeaders(scope["headers"]).check_host(scope.get("http_version", "1.1"))
        except GatewayError as error:
            body = problem_body(error, request_id)
            await send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
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


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    authorization = connection.headers.get("authorization")
    if not authorization:
        raise Unauthenticated("admin credentials are required", code="admin.unauthenticated")
    scheme, _sep, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("admin credentials are a Bearer token", code="admin.unauthenticated")
    state = gateway_state(connection)
    if not state.admin_ok(token.strip()):
        runtime = state.runtime
        if (
            runtime is not None
            and runtime.client_keys.identify(token.strip(), runtime.policy.current) is not None
        ):
            raise Forbidden("client keys do not open admin endpoints", code="admin.forbidden")
        raise Unauthenticated("the admin token is not valid", code="admin.unauthenticated")


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    ready: bool
    policy: bool
    audit: bool
    keys: bool
    policy_version: str | None = None


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
    """Ready when the policy is loaded, the signing keys are usable and the audit
    store takes records; 503 otherwise (the proxy would fail closed anyway)."""
    state = gateway_state(request)
    policy_ok = state.policy is not None and state.policy.current is not None
    audit_ok = state.audit is not None and state.audit.healthy()
    keys_ok = state.keyring is not None
    body = Readiness(
        ready=policy_ok and audit_ok and keys_ok,
        policy=policy_ok,
        audit=audit_ok,
        keys=keys_ok,
        policy_version=state.policy.current.version if state.policy is not None else None,
    )
    return Response(body, status_code=200 if body.ready else 503)


@get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["health"],
    guards=[admin_guard],
    security=SECURITY,
    middleware=[request_id_middleware],
    media_type="text/plain; version=0.0.4",
    responses=ADMIN_ERRORS,
)
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    """Lookups by decision, rule, purpose and upstream; upstream and audit latency;
    audit queue depth; policy reloads. No subject identifiers."""
    state = gateway_state(request)
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


class PolicyProblem(msgspec.Struct):
    code: str
    message: str
    line: int
    col: int


class Validation(msgspec.Struct):
    valid: bool
    version: str | None = None
    problems: list[PolicyProblem] = []


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
    decision: str
    policy_version: str
    route: str
    purpose: str
    matched: list[ExplainedRule]
    deny_rule: str | None = None
    redact: list[str] = []
    coarsen: bool = False


@get("/policy", summary="The active policy", operation_id="getPolicy", responses=ADMIN_ERRORS)
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
    status_code=200,
    request_max_body_size=1024 * 1024,
)
async def validate_policy(body: RawBody) -> Validation:
    """Send the YAML text of a policy file; get every problem with its line and column."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Validation(
            valid=False,
            problems=[
                PolicyProblem(code="file.encoding", message="the file is not UTF-8", line=1, col=1)
            ],
        )
    try:
        source = parse_policy(text, filename="policies.yaml")
    except PolicyError as exc:
        return Validation(
            valid=False,
            problems=[
                PolicyProblem(code=p.code, message=p.message, line=p.line, col=p.col)
                for p in exc.problems
            ],
        )
    return Validation(valid=True, version=source.version)


@post(
    "/policy/explain",
    summary="Explain a decision",
    operation_id="explainPolicy",
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
    responses=ADMIN_ERRORS,
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
    _only_query(request, {"since", "until", "format", "records"})
    state = gateway_state(request)
    if state.store is None or state.keyring is None:
        raise _unavailable("the audit store")
    store, keyring = state.store, state.keyring
    if format == "csv":
        return Stream(
            iter_csv_chunks(
                iter_store_records(store), raw_records=records, since=since, until=until
            ),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    return Stream(
        iter_export_chunks(store, keyring, since=since, until=until, chunk_size=64 * 1024),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
    )


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
    _only_query(request, {"upstream", "subject"})
    state = gateway_state(request)
    if state.store is None or state.policy is None or state.pseudonyms is None:
        raise _unavailable("the audit store")
    config = state.policy.current.upstreams.get(upstream)
    if config is None:
        raise NotFound("no upstream of that name in the active policy", code="upstream.unknown")
    pseudonyms = subject_pseudonyms(config, state.pseudonyms, subject)
    store = state.store
    committer = state.pseudonyms.committer()
    entries = await asyncio.to_thread(
        lambda: (
            list(subject_records(store, pseudonyms, committer, upstream=upstream))
            if pseudonyms
            else []
        )
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
    ],
    guards=[admin_guard],
    security=SECURITY,
    middleware=[request_id_middleware],
    tags=["admin"],
)
