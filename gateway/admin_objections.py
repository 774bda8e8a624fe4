"""``/admin/objections``: objections through the admin API, audited like the CLI's.

``POST`` objects one person named by one or more identifiers, ``GET`` lists
objected people (pseudonyms, since when, how many identifiers linked), ``DELETE``
withdraws a person's objection. Identifiers travel in the JSON body, never in the
URL (access logs keep URLs), and are turned into keyed pseudonyms at once; no
answer, log line or record carries them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Router, delete, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import RawBody

from gateway.admin import (
    ADMIN_ERRORS,
    SECURITY,
    _problem,
    admin_guard,
    admin_of,
    decode_strict_json,
    gateway_state,
    request_id_middleware,
)
from gateway.audit.store import StoreError
from gateway.errors import AuditUnavailable, BadRequest, NotFound, ServiceUnavailable
from gateway.objections import ObjectionError, Recorder, add, pseudonyms_of, remove, short

MAX_SUBJECTS = 32
# Admin roles (design: auditor, policy, operator): objections are policy work; the
# admin guard that reads this (branch adminops) also lets operators in.
ROLE = {"admin_act": "objections", "admin_role": "policy"}


class ObjectionRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    upstream: str
    subjects: list[str]


@dataclass
class ObjectionOperation(Operation):
    """Documents the JSON body that the handlers decode themselves (strictly)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["upstream", "subjects"],
                        additional_properties=False,
                        properties={
                            "upstream": Schema(
                                type=OpenAPIType.STRING,
                                description="an upstream name of the policy, e.g. klout",
                            ),
                            "subjects": Schema(
                                type=OpenAPIType.ARRAY,
                                min_items=1,
                                max_items=MAX_SUBJECTS,
                                items=Schema(type=OpenAPIType.STRING, max_length=256),
                                description="identifiers of one person there; "
                                "NAMESPACE:ID (twitter_id:1002) narrows a bare number",
                            ),
                        },
                    )
                )
            },
        )


class ObjectionAdded(msgspec.Struct, kw_only=True):
    objected: bool
    pseudonyms: list[str]  # shortened, of the identifiers given
    identifiers: int  # linked to the person now
    already_known: int
    merged: int


class ObjectionRemoved(msgspec.Struct, kw_only=True):
    people: int
    pseudonyms: list[str]  # shortened, of the identifiers the objection had named


class ObjectedPersonView(msgspec.Struct, kw_only=True):
    since: str
    actor: str
    given: list[str]
    identifiers: int


class ObjectionList(msgspec.Struct, kw_only=True):
    people: list[ObjectedPersonView]


def _actor(request: Request[Any, Any, Any]) -> tuple[str, str]:
    """The admin token's id and role, as every admin record names them (never the token)."""
    admin = admin_of(request)
    return admin.id, admin.role


def _recorder(request: Request[Any, Any, Any]) -> Recorder:
    state = gateway_state(request)
    assert state.audit is not None
    assert state.pseudonyms is not None
    return Recorder(state.audit, state.request_ids, state.pseudonyms.committer())


def _resolve(request: Request[Any, Any, Any], body: bytes) -> tuple[str, tuple[str, ...]]:
    data = decode_strict_json(body, ObjectionRequest)
    if not 1 <= len(data.subjects) <= MAX_SUBJECTS:
        raise BadRequest(
            f"subjects holds 1 to {MAX_SUBJECTS} identifiers", code="request.invalid_json"
        )
    state = gateway_state(request)
    if state.policy is None or state.pseudonyms is None or state.identity is None:
        raise ServiceUnavailable("the identity graph is not ready", code="gateway.starting")
    config = state.policy.current.upstreams.get(data.upstream)
    if config is None:
        raise NotFound("no upstream of that name in the active policy", code="upstream.unknown")
    try:
        return data.upstream, pseudonyms_of(config, state.pseudonyms, data.subjects)
    except ObjectionError as exc:
        raise BadRequest(str(exc), code="objection.invalid_subject") from None


@post(
    "/objections",
    summary="Object one person (GDPR Art. 21)",
    operation_id="addObjection",
    opt=ROLE,
    status_code=201,
    request_max_body_size=16 * 1024,
    operation_class=ObjectionOperation,
    responses={
        **ADMIN_ERRORS,
        404: _problem("No such upstream (upstream.unknown)"),
        503: _problem("The store cannot take the objection (audit.unavailable)"),
    },
)
async def add_objection(request: Request[Any, Any, Any], body: RawBody) -> ObjectionAdded:
    """Body ``{"upstream": "klout", "subjects": ["bob_example", "twitter_id:1002"]}``:
    the identifiers of one person. They are linked into one person and every
    identifier linked to it, now or later, is answered neutral without asking the
    upstream, on every replica within a second. The act is an audit record."""
    upstream, pseudonyms = _resolve(request, body)
    state = gateway_state(request)
    assert state.identity is not None
    assert state.audit is not None
    actor, role = _actor(request)
    try:
        added = await add(
            state.identity.store,
            _recorder(request),
            upstream,
            pseudonyms,
            actor=actor,
            role=role,
        )
    except StoreError as exc:
        raise AuditUnavailable("the store cannot take the objection") from exc
    await state.identity.refresh()  # in force on this replica before the answer
    linked = added.linked
    return ObjectionAdded(
        objected=True,
        pseudonyms=[short(p) for p in added.pseudonyms],
        identifiers=linked.identifiers,
        already_known=linked.identifiers - linked.new,
        merged=linked.merged,
    )


@get(
    "/objections",
    summary="Objected people",
    operation_id="listObjections",
    opt=ROLE,
    responses=ADMIN_ERRORS,
)
async def list_objections(request: Request[Any, Any, Any]) -> ObjectionList:
    """Every objected person: since when, by whom, the pseudonyms given (shortened)
    and how many identifiers are linked to them. Never an identifier."""
    state = gateway_state(request)
    if state.identity is None:
        raise ServiceUnavailable("the identity graph is not ready", code="gateway.starting")
    try:
        people = await asyncio.to_thread(state.identity.store.objections)
    except StoreError as exc:
        raise AuditUnavailable("the store cannot be read") from exc
    return ObjectionList(
        people=[
            ObjectedPersonView(
                since=p.since,
                actor=p.actor,
                given=[short(g) for g in p.given],
                identifiers=p.identifiers,
            )
            for p in people
        ]
    )


@delete(
    "/objections",
    summary="Withdraw a person's objection",
    operation_id="removeObjection",
    opt=ROLE,
    status_code=200,
    request_max_body_size=16 * 1024,
    operation_class=ObjectionOperation,
    responses={
        **ADMIN_ERRORS,
        404: _problem("No such upstream (upstream.unknown)"),
        503: _problem("The store cannot take the change (audit.unavailable)"),
    },
)
async def remove_objection(request: Request[Any, Any, Any], body: RawBody) -> ObjectionRemoved:
    """Same body as ``POST``; any one identifier of the person will do. The links
    stay; the act is an audit record."""
    upstream, pseudonyms = _resolve(request, body)
    state = gateway_state(request)
    assert state.identity is not None
    assert state.audit is not None
    actor, role = _actor(request)
    try:
        people, named = await remove(
            state.identity.store,
            _recorder(request),
            upstream,
            pseudonyms,
            actor=actor,
            role=role,
        )
    except StoreError as exc:
        raise AuditUnavailable("the store cannot take the change") from exc
    await state.identity.refresh()
    return ObjectionRemoved(people=people, pseudonyms=[short(p) for p in named])


objections_router = Router(
    path="/admin",
    route_handlers=[add_objection, list_objections, remove_objection],
    guards=[admin_guard],
    security=SECURITY,
    middleware=[request_id_middleware],
    tags=["admin"],
)
