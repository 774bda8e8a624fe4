"""``GET /admin/report`` and ``POST /admin/policy/replay``: the compliance views.

Both sit under ``/admin`` with the admin guard: the report needs the ``auditor``
role and is on the record as ``admin.report``; replay needs ``policy`` and is on
the record as ``admin.replay`` (with the versions compared and the verdict).
The report is the one ``gateway audit report`` writes (:mod:`gateway.audit.report`),
built from a verified export of the window; the page is self-contained and its
``Content-Security-Policy`` forbids loading anything from anywhere.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.params import QueryParameter, RawBody

from gateway.admin import (
    ADMIN_ERRORS,
    RFC3339,
    SECURITY,
    _only_query,
    _problem,
    _unavailable,
    admin_act,
    admin_guard,
    admin_of,
    audit_admin_act,
    gateway_state,
    request_id_middleware,
)
from gateway.audit.lookups import iter_store_records
from gateway.audit.record import rfc3339
from gateway.audit.report import render_html, render_json, report_from_store
from gateway.errors import BadRequest, Forbidden, GatewayError, ServiceUnavailable
from gateway.policies.apply import StagedChange, commit_change, stage_change
from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.diff import summary
from gateway.policies.loader import PolicyError, parse_policy
from gateway.policies.replay import ReplaySummary, replay
from gateway.policies.testing import DEFAULT_CASES_DIR

__all__ = ["report_router"]

# Inline styles and scripts only; no fetch, image, font or frame from any origin.
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@get(
    "/report",
    summary="The compliance report (HTML, or JSON with format=json)",
    operation_id="auditReport",
    responses=ADMIN_ERRORS,
    media_type="text/html",
    opt=admin_act("report", "auditor"),
)
async def audit_report(
    request: Request[Any, Any, Any],
    since: Annotated[
        str | None, QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, inclusive")
    ] = None,
    until: Annotated[
        str | None, QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, exclusive")
    ] = None,
    format: Annotated[Literal["html", "json"], QueryParameter()] = "html",
) -> Response[bytes]:
    """Lookups (one per request), decisions, denials by rule, client and purpose, hiring
    lookups blocked, neutral answers, throttling, objections, policy versions, and the
    verification of the window's export. Every figure links to its request ids."""
    state = gateway_state(request)
    try:
        _only_query(request, {"since", "until", "format"})
        if state.store is None or state.keyring is None or state.policy is None:
            raise _unavailable("the audit store")
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    # On the record before anything is read: who looked at the figures, for which window.
    await audit_admin_act(request, detail=f"{format} since {since or '-'} until {until or '-'}")
    store, keyring, policy = state.store, state.keyring, state.policy.current
    report = await asyncio.to_thread(
        report_from_store,
        store,
        keyring,
        since=since,
        until=until,
        policy=policy,
        temp_dir=state.settings.data_dir,
    )
    if format == "json":
        return Response(render_json(report), media_type="application/json")
    return Response(
        render_html(report).encode(),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )


@post(
    "/policy/replay",
    summary="What a policy change would have done to the logged lookups",
    operation_id="replayPolicy",
    responses=ADMIN_ERRORS,
    status_code=200,
    request_max_body_size=1024 * 1024,
    opt=admin_act("replay", "policy"),
)
async def replay_policy(
    request: Request[Any, Any, Any],
    body: RawBody,
    since: Annotated[
        str | None, QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, inclusive")
    ] = None,
    until: Annotated[
        str | None, QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, exclusive")
    ] = None,
) -> ReplaySummary:
    """Send the YAML text of a proposed policy file. Every logged lookup in the window is
    decided again under it and under the active policy; the answer counts what would
    change (allow→deny, deny→allow, newly neutralized, ...), by rule, client and purpose,
    with example request ids, and says whether the change loosens the policy."""
    state = gateway_state(request)
    try:
        _only_query(request, {"since", "until"})
        if state.store is None or state.policy is None:
            raise _unavailable("the audit store")
        proposed = _proposed(body)
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    store, active = state.store, state.policy.current
    summary = await asyncio.to_thread(
        lambda: replay(iter_store_records(store), active, proposed, since=since, until=until)
    )
    await audit_admin_act(
        request,
        detail=f"{proposed.version} against {active.version}: {summary.changed} of "
        f"{summary.replayed} lookups would change; loosening: {summary.loosening}",
    )
    return summary


def _proposed(body: bytes) -> CompiledPolicy:
    try:
        text = body.decode("utf-8")
        return compile_policy(parse_policy(text, filename="proposed.yaml"))
    except UnicodeDecodeError:
        raise BadRequest("the policy file is not UTF-8", code="policy.invalid") from None
    except PolicyError as exc:
        raise BadRequest(
            "the proposed policy has errors: " + "; ".join(exc.lines()[:20]),
            code="policy.invalid",
        ) from None


class Applied(msgspec.Struct, kw_only=True):
    """A change that passed every step and was written over the active file."""

    version: str
    path: str
    actor: str
    cases_passed: int
    diff: list[str]
    replay: ReplaySummary | None = None


@post(
    "/policy/apply",
    summary="Check, test, replay and diff a new policy, then make it the active file",
    operation_id="applyPolicy",
    responses={**ADMIN_ERRORS, 422: _problem("The change was refused (policy.refused)")},
    status_code=200,
    request_max_body_size=1024 * 1024,
    opt=admin_act("apply", "policy"),
)
async def apply_policy(
    request: Request[Any, Any, Any],
    body: RawBody,
    since: Annotated[
        str | None,
        QueryParameter(pattern=RFC3339, description="replay from (default: 30 days ago)"),
    ] = None,
    allow_loosening: Annotated[bool, QueryParameter()] = False,
) -> Applied:
    """Send the YAML text of the new policy file. As ``gateway policy apply``: the file
    must check, pass the test cases next to the active file, and (unless
    ``allow_loosening``) not loosen the policy; then it replaces the active file in one
    rename and the gateway loads it. Its ``policy.load`` record names this token's id.
    A refusal is 422 ``policy.refused`` with the reasons in ``errors``."""
    state = gateway_state(request)
    try:
        _only_query(request, {"since", "allow_loosening"})
        holder = state.policy
        if state.store is None or holder is None:
            raise _unavailable("the audit store")
        target = holder.path
        if await asyncio.to_thread(_bundled, target):
            raise Forbidden(
                "the bundled demo policy is read-only; start the gateway with --policies FILE",
                code="policy.read_only",
            )
        store, active = state.store, holder.current
        start = since or rfc3339(time.time() - 30 * 86400)
        staged = await asyncio.to_thread(
            stage_change,
            bytes(body),
            name=target.name,
            active=active,
            cases_dir=target.parent / DEFAULT_CASES_DIR,
            records=lambda: iter_store_records(store),
            since=start,
            allow_loosening=allow_loosening,
        )
        if staged.refused is not None:
            raise GatewayError(
                f"refused: {staged.refused}; nothing was changed",
                code="policy.refused",
                status=422,
                extra={"errors": _reasons(staged)},
            )
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    assert staged.new is not None
    actor = admin_of(request).id
    # On the record before the file changes: who applied which version.
    await audit_admin_act(request, detail=f"{staged.new.version}: {summary(staged.diff)}")
    try:
        await asyncio.to_thread(
            commit_change, staged, bytes(body), target=target, data_dir=state.settings.data_dir,
            actor=actor,
        )  # fmt: skip
    except OSError as exc:
        raise ServiceUnavailable(
            f"the policy file cannot be written ({exc.strerror}); nothing was changed",
            code="policy.unwritable",
        ) from None
    return Applied(
        version=staged.new.version,
        path=str(target),
        actor=actor,
        cases_passed=len(staged.cases),
        diff=staged.diff,
        replay=staged.replay,
    )


def _bundled(path: Path) -> bool:
    """Whether ``path`` is inside the installed package (the demo policy)."""
    return path.resolve().is_relative_to(Path(__file__).resolve().parent)


def _reasons(staged: StagedChange) -> list[str]:
    return [
        *staged.problems,
        *(r.render() for r in staged.failed_cases),
        *(f"may loosen: {line}" for line in staged.may_loosen),
        *(
            [staged.replay.render()]
            if staged.replay is not None and staged.replay.loosening
            else []
        ),
    ]


report_router = Router(
    path="/admin",
    route_handlers=[audit_report, replay_policy, apply_policy],
    guards=[admin_guard],
    security=SECURITY,
    middleware=[request_id_middleware],
    tags=["admin"],
)
