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
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.params import QueryParameter, RawBody

from gateway.admin import (
    ADMIN_ERRORS,
    RFC3339,
    SECURITY,
    _only_query,
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
from gateway.audit.report import Report, render_html, report_from_store
from gateway.errors import Forbidden, GatewayError, ServiceUnavailable
from gateway.policies.apply import StagedChange, commit_change, stage_change
from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.diff import summary
from gateway.policies.loader import PolicyError, parse_policy
from gateway.policies.replay import ReplaySummary, replay

__all__ = ["report_router"]

# Inline styles and scripts only; no fetch, image, font or frame from any origin.
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


_SINCE = QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, inclusive")
_UNTIL = QueryParameter(pattern=RFC3339, description="RFC 3339 UTC, exclusive")


@get(
    "/report",
    summary="The compliance report, as a self-contained HTML page",
    operation_id="auditReport",
    responses=ADMIN_ERRORS,
    media_type="text/html",
    opt=admin_act("report", "auditor"),
)
async def audit_report(
    request: Request[Any, Any, Any],
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
) -> Response[bytes]:
    """Lookups (one per request), decisions, denials by rule, client and purpose, hiring
    lookups blocked, neutral answers, throttling, objections, policy versions, and the
    verification of the window's export. Every figure links to its request ids."""
    report = await _report(request, since, until, "html")
    return Response(
        render_html(report).encode(),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )


@get(
    "/report.json",
    summary="The compliance report's figures",
    operation_id="auditReportData",
    responses=ADMIN_ERRORS,
    opt=admin_act("report", "auditor"),
)
async def audit_report_data(
    request: Request[Any, Any, Any],
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
) -> Report:
    """The same report as JSON: ``lookups``, ``by_decision``, ``hiring_blocked``,
    ``neutralized``, ``denials_by_rule``, ``denials_by_client``, ``policy_versions``,
    ``verification`` and the request ids behind each figure."""
    return await _report(request, since, until, "json")


async def _report(
    request: Request[Any, Any, Any], since: str | None, until: str | None, form: str
) -> Report:
    state = gateway_state(request)
    try:
        _only_query(request, {"since", "until"})
        if state.store is None or state.keyring is None or state.policy is None:
            raise _unavailable("the audit store")
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    # On the record before anything is read: who looked at the figures, for which window.
    await audit_admin_act(request, detail=f"{form} since {since or '-'} until {until or '-'}")
    store, keyring, policy = state.store, state.keyring, state.policy.current
    return await asyncio.to_thread(
        report_from_store,
        store,
        keyring,
        since=since,
        until=until,
        policy=policy,
        temp_dir=state.settings.data_dir,
        verify_workers=1,
    )


class ReplayAnswer(msgspec.Struct, kw_only=True):
    """``valid`` false: the proposed file does not load (``problems`` say why, as
    ``FILE:LINE:COL``), as ``POST /admin/policy/validate`` answers; else the summary."""

    valid: bool
    problems: list[str] = []
    replay: ReplaySummary | None = None


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
) -> ReplayAnswer:
    """Send the YAML text of a proposed policy file. Every logged lookup in the window is
    decided again under it and under the active policy; the answer counts what would
    change (allow→deny, deny→allow, newly neutralized, ...), by rule, client and purpose,
    with example request ids, and says whether the change loosens the policy."""
    state = gateway_state(request)
    try:
        _only_query(request, {"since", "until"})
        if state.store is None or state.policy is None:
            raise _unavailable("the audit store")
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    proposed = _proposed(body)
    if isinstance(proposed, list):
        await audit_admin_act(request, detail="the proposed policy does not load")
        return ReplayAnswer(valid=False, problems=proposed)
    store, active = state.store, state.policy.current
    summary = await asyncio.to_thread(
        lambda: replay(iter_store_records(store), active, proposed, since=since, until=until)
    )
    await audit_admin_act(
        request,
        detail=f"{proposed.version} against {active.version}: {summary.changed} of "
        f"{summary.replayed} lookups would change; loosening: {summary.loosening}",
    )
    return ReplayAnswer(valid=True, replay=summary)


def _proposed(body: bytes) -> CompiledPolicy | list[str]:
    """The compiled proposal, or its problems as ``FILE:LINE:COL: message`` lines."""
    try:
        return compile_policy(parse_policy(body.decode("utf-8"), filename="proposed.yaml"))
    except UnicodeDecodeError:
        return ["proposed.yaml:1:1: the file is not UTF-8"]
    except PolicyError as exc:
        return exc.lines()


class Applied(msgspec.Struct, kw_only=True):
    """The outcome of a staged change: written (``applied``), or refused and why.

    A refusal is an answer, not an error (as ``POST /admin/policy/validate``):
    ``refused`` names the step that stopped it, ``reasons`` the problems, failing
    cases or loosenings; nothing was written."""

    applied: bool
    version: str | None = None
    path: str
    actor: str
    refused: str | None = None
    reasons: list[str] = []
    cases_passed: int = 0
    diff: list[str] = []
    replay: ReplaySummary | None = None


@post(
    "/policy/apply",
    summary="Check, test, replay and diff a new policy, then make it the active file",
    operation_id="applyPolicy",
    responses=ADMIN_ERRORS,
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
    A refusal is ``applied: false`` with the step (``refused``) and the ``reasons``."""
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
            base=target.parent,
            records=lambda: iter_store_records(store),
            since=start,
            allow_loosening=allow_loosening,
        )
    except GatewayError as error:
        await audit_admin_act(request, status=error.status, detail=error.code)
        raise
    actor = admin_of(request).id
    if staged.refused is not None or staged.new is None:
        await audit_admin_act(request, detail=f"refused: {staged.refused}")
        return Applied(
            applied=False,
            version=staged.new.version if staged.new else None,
            path=str(target),
            actor=actor,
            refused=staged.refused,
            reasons=_reasons(staged),
            cases_passed=len(staged.cases) - len(staged.failed_cases),
            diff=staged.diff,
            replay=staged.replay,
        )
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
        applied=True,
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
    route_handlers=[audit_report, audit_report_data, replay_policy, apply_policy],
    guards=[admin_guard],
    security=SECURITY,
    middleware=[request_id_middleware],
    tags=["admin"],
)
