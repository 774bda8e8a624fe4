"""The request path: identify → decide → fetch → answer.

Every proxied request is one :meth:`Proxy.__call__`, a raw ASGI handler mounted in
the Litestar app: the hot path skips the framework's routing, request and response
objects (``reference/performance.md``: they cost as much as the server itself).
Each step is a method of its own, small enough to test alone:

1. :meth:`Proxy.identify` reads the target, the client's key, the purpose and the
   route, and knows whom the request is about (:class:`Identified`). A request
   refused here names no client (bad key, bad path): :meth:`Proxy.refuse_unidentified`.
2. :meth:`Proxy.decide` asks the policy engine, and finds who is answered here
   (objections: :meth:`Proxy.objected`, the one place they are checked) and what
   is left to ask the upstream (:class:`Plan`).
3. :meth:`Proxy.fetch` takes the lookup's quota, writes the intent and asks the
   :class:`~gateway.transport.Transport` (or the cache) for an ``UpstreamAnswer``.
4. :meth:`Proxy.answer` classifies the answer, neutralizes, redacts and coarsens;
   :meth:`Proxy.answer_locally` does the same for lookups the upstream never sees.

Guarantees this module keeps, and where:

* Only upstreams named in the policy are reachable; the upstream URL is the
  policy's base URL plus a path that passed a strict charset (``_split_target``).
  ``Host`` and absolute-form targets never choose a host; redirects are never
  followed.
* No log, no lookup: a ``lookup.intent`` record is durably committed before the
  upstream is contacted, and the ``lookup`` record with the outcome before the
  caller gets an answer. If the store cannot take either, the caller gets 503
  ``audit.unavailable`` and no score (:meth:`_audit`).
* Missing means neutral: missing, pending and objected subjects get an answer in
  the upstream's own success shape, encoded exactly like real answers, with the
  same headers. Objected subjects never reach the upstream and are answered after
  a delay that tracks real round trips.
* The caller's gateway key is removed and the upstream credential injected after
  the caller's headers were filtered, so no caller can remove or read it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import msgspec
from opentelemetry.trace import SpanKind

from gateway.audit.record import AuditRecord, PersonRole, rfc3339
from gateway.cache import CacheKey
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
    UpstreamError,
    render_problem,
)
from gateway.headers import InboundHeaders
from gateway.identity import issued_among, neutral_ids, objected_in_answer
from gateway.limits import Quota
from gateway.policies.compile import CompiledPolicy
from gateway.policies.model import Client, Decision, LookupContext, Outcome
from gateway.runtime import GatewayRuntime, UpstreamRuntime
from gateway.transport import NOT_A_FAILURE, UpstreamRequest
from gateway.upstreams.base import InvalidSubject, RouteMatch, Subject, UpstreamAnswer

log = logging.getLogger("gateway.proxy")

# A path segment may hold RFC 3986 unreserved characters and a few sub-delims.
# No "%" (no encoded slashes, dots or NULs to decode differently later), no ";"
# (matrix parameters), no "\\"; ".." and empty segments are refused separately
# (Envoy CVE-2019-9901, CVE-2021-29492).
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@-]+")
_PATH = re.compile(rf"(?:/{_SEGMENT.pattern}){{2,}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_QUERY_FIELDS = 64
NEUTRAL_OUTCOMES: frozenset[str] = frozenset({"missing", "pending", "objected"})
_CACHED = ("found", "missing")  # answers worth keeping: not pending, never errors

_Scope = dict[str, Any]
_Receive = Callable[[], Any]
_Send = Callable[[dict[str, Any]], Any]


class _Lookup:
    """What one request has learned so far; becomes its audit record."""

    __slots__ = (
        "client",
        "client_kind",
        "decision",
        "detail",
        "error",
        "intent_committed",
        "outcome",
        "outcomes",
        "people",
        "purpose",
        "refused_stranger",
        "request_id",
        "route",
        "rules",
        "status",
        "subjects",
        "upstream",
        "upstream_status",
        "version",
    )

    def __init__(self) -> None:
        self.intent_committed = False
        self.refused_stranger = False
        self.request_id: str | None = None
        self.client: str | None = None
        self.client_kind: str | None = None
        self.purpose: str | None = None
        self.upstream: str | None = None
        self.route: str | None = None
        self.subjects: list[str] = []
        self.decision: str | None = None
        self.rules: list[str] = []
        self.version: str | None = None
        self.outcome: str | None = None
        self.upstream_status: int | None = None
        self.status: int | None = None
        self.error: str | None = None
        self.detail: str | None = None
        # People inside the answer other than those asked: (role, their identifiers).
        self.people: list[tuple[PersonRole, tuple[Subject, ...]]] = []
        # Each asked person's own outcome, by pseudonym, where it differs per person.
        self.outcomes: dict[str, str] = {}


class Identified(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Proxy.identify` learned: who asks, for what, about whom, where."""

    policy: CompiledPolicy  # one snapshot: the whole request is decided under it
    upstream: UpstreamRuntime
    client: Client
    purpose: str
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: InboundHeaders
    route: RouteMatch
    pseudonyms: dict[Subject, str]

    @property
    def context(self) -> LookupContext:
        return LookupContext(
            client=self.client.id,
            client_kind=self.client.kind,
            purpose=self.purpose,
            upstream=self.upstream.name,
            route=self.route.template,
        )


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Proxy.decide` settled before anything leaves the gateway."""

    decision: Decision  # under outcome None: the limits, redactions for found people
    objected: frozenset[Subject]  # asked about and objected: never sent upstream
    local: frozenset[Subject]  # answered here: objected, or ids the gateway issued
    local_outcome: Outcome  # how the audit names the local ones
    # The request still to send upstream (path, query), or None: answered here.
    forward: tuple[str, list[tuple[str, str]]] | None


class Proxy:
    """The ASGI handler for ``/{upstream}/{path}``."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self.rt = runtime
        self.limits = runtime.settings.limits
        # Request ids: a keyed permutation of a counter (gateway/requestid.py), so
        # they tell a caller nothing about other traffic and cost no system call.
        self._next_id = runtime.request_ids.next_id

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "websocket":
            # Never accepted, never tunnelled: closing before the handshake is a 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        if not self.rt.tracing:
            await self._serve(scope, receive, send, _Lookup())
            return
        lookup = _Lookup()
        with self.rt.tracer.start_as_current_span("gateway.lookup", kind=SpanKind.SERVER) as span:
            await self._serve(scope, receive, send, lookup)
            # Names, purposes, rule ids and outcomes only: never a subject or a score.
            attributes = {
                "gateway.request_id": lookup.request_id,
                "gateway.client": lookup.client,
                "gateway.purpose": lookup.purpose,
                "gateway.upstream": lookup.upstream,
                "gateway.route": lookup.route,
                "gateway.decision": lookup.decision,
                "gateway.rules": ",".join(lookup.rules) or None,
                "gateway.outcome": lookup.outcome,
                "gateway.error": lookup.error,
                "http.response.status_code": lookup.status,
            }
            span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    async def _serve(self, scope: _Scope, receive: _Receive, send: _Send, lookup: _Lookup) -> None:
        started = time.perf_counter()
        request_id = self._next_id()
        lookup.request_id = request_id
        try:
            answer, extra_headers = await self._lookup(scope, receive, lookup, started)
        except GatewayError as error:
            await self._refuse(scope, send, error, lookup, started)
            return
        except Exception as exc:  # noqa: BLE001  # any bug: a 500 problem, never a crash
            # A bug, not a refusal: the caller still gets a problem with its request
            # id. The log names the error type and where it was raised, never its
            # message or the path: either may hold an identifier.
            where = "".join(traceback.format_tb(exc.__traceback__)[-3:])
            log.error(
                "unhandled %s in the request path (request %s)\n%s",
                type(exc).__name__,
                request_id,
                where,
            )
            internal = GatewayError("the gateway could not handle this request")
            await self._refuse(scope, send, internal, lookup, started)
            return
        headers = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
            (b"x-request-id", request_id.encode()),
            *extra_headers,
        ]
        self.rt.metrics.lookup(lookup, time.perf_counter() - started)
        await _respond(send, answer.status, headers, answer.body)

    async def _refuse(
        self,
        scope: _Scope,
        send: _Send,
        error: GatewayError,
        lookup: _Lookup,
        started: float,
    ) -> None:
        """Answer ``error`` as a problem, audited like every other lookup attempt."""
        rt = self.rt
        request_id = lookup.request_id or ""
        if lookup.client is None and rt.refusals is not None:
            # Refused before any client was identified: not a lookup about anyone.
            # Limited per source and recorded in aggregates (gateway/refusals.py).
            error = rt.refusals.refuse(_peer(scope), request_id, error)
            lookup.refused_stranger = True
        lookup.status = error.status
        lookup.error = error.code
        lookup.decision = lookup.decision or "error"
        status, headers, body = render_problem(error, request_id)
        if isinstance(error, AuditUnavailable) and lookup.intent_committed:
            # The intent is in the log but its outcome is not: record the failure
            # as soon as the store takes records again (no score was returned).
            lookup.decision = "error"
            rt.backlog.add(*self._entry("lookup", request_id, lookup, started))
        if not isinstance(error, AuditUnavailable) and not lookup.refused_stranger:
            # Every lookup attempt is audited, refused ones too (unknown key,
            # bad path): each X-Request-Id a caller holds has its record. The
            # error is already the answer and holds no score, so a store that
            # cannot take the record now gets it from the backlog later.
            try:
                await self._audit("lookup", request_id, lookup, started)
            except AuditUnavailable:
                rt.backlog.add(*self._entry("lookup", request_id, lookup, started))
        rt.metrics.lookup(lookup, time.perf_counter() - started)
        await _respond(send, status, headers, body)

    async def _lookup(
        self, scope: _Scope, receive: _Receive, lookup: _Lookup, started: float
    ) -> tuple[UpstreamAnswer, list[tuple[bytes, bytes]]]:
        """identify → decide → fetch → answer; raises ``GatewayError`` to refuse.

        Every lookup, whether the vendor will see it or not, meets the same refusals
        in the same order (:meth:`admit`), and every answer the vendor did not give
        leaves when a vendor-bound one would have (:meth:`_wait_like_the_vendor`):
        neither a refusal nor a delay tells an objected person from anyone else.
        """
        rt = self.rt
        request = await self.settle_ids(self.identify(scope, lookup))
        plan = self.decide(request, lookup)
        await self.admit(request, plan, lookup)
        if plan.forward is None:
            answer, neutral = await self.answer_locally(request, plan, lookup)
            vendor_bound = False
        else:
            raw, cache_key = await self.fetch(request, plan, lookup, scope, receive, started)
            vendor_bound = cache_key is not None or lookup.intent_committed
            answer, neutral = await self.answer(request, plan, raw, lookup)
            if cache_key is not None and rt.cache is not None and lookup.outcome in _CACHED:
                rt.cache.put(cache_key, raw)
        lookup.status = answer.status
        if vendor_bound:
            await self._audit("lookup", lookup.request_id or "", lookup, started)
            rt.answer_times.observe(
                request.upstream.name, request.route.template, time.perf_counter() - started
            )
        else:
            # The record is committed while the answer is held, not before: the
            # hold then starts when a vendor-bound lookup's own work starts, and a
            # slow commit cannot push the answer past its time. A store that
            # refuses the record still fails the lookup at once (no log, no lookup).
            commit = asyncio.ensure_future(
                self._audit("lookup", lookup.request_id or "", lookup, started)
            )
            try:
                await self._wait_like_the_vendor(request, started, commit)
            except BaseException:  # cancelled (the caller left): the commit goes too
                commit.cancel()
                raise
            await commit
        return answer, self._neutral_headers(request.policy) if neutral else []

    # -- 1. identify -------------------------------------------------------------------

    def identify(self, scope: _Scope, lookup: _Lookup) -> Identified:
        """Who asks, for which purpose, about whom: or a refusal that names no one."""
        rt = self.rt
        policy = rt.policy.current
        try:
            upstream, headers, path, query, client = self._identify_client(scope, lookup, policy)
        except GatewayError as error:
            raise self.refuse_unidentified(error) from None
        method: str = scope["method"]
        lookup.client, lookup.client_kind = client.id, client.kind

        purpose = headers.get_one("x-purpose", code="request.ambiguous_purpose")
        if purpose is None:
            purpose = client.default_purpose
        if purpose is None:
            raise BadRequest(
                "this client has no default purpose; send X-Purpose", code="purpose.missing"
            )
        # A purpose outside the vocabulary is the caller's free text: it is judged
        # (and refused) by the policy, but never written into the audit record.
        lookup.purpose = purpose if purpose in policy.purposes else None

        try:
            route = upstream.adapter.match(method, path, query)
        except InvalidSubject as exc:
            raise BadRequest(str(exc), code="request.invalid_subject") from None
        if route is None:
            if method not in ("GET", "HEAD", "POST"):
                raise MethodNotAllowed(f"{method} is not supported here")
            raise NotFound("this API has no such route", code="route.unknown")
        lookup.route = route.template
        if any(name not in route.params for name, _ in query):
            # Never echo the parameter: its name or value may be an identifier.
            declared = ", ".join(sorted(route.params)) or "none"
            raise BadRequest(
                f"this route takes only the query parameters it declares ({declared})",
                code="request.unknown_parameter",
            )
        pseudonyms = {s: rt.pseudonyms.pseudonym(s.namespace, s.identifier) for s in route.subjects}
        lookup.subjects = list(pseudonyms.values())
        return Identified(
            policy=policy,
            upstream=upstream,
            client=client,
            purpose=purpose,
            method=method,
            path=path,
            query=query,
            headers=headers,
            route=route,
            pseudonyms=pseudonyms,
        )

    def _identify_client(
        self, scope: _Scope, lookup: _Lookup, policy: CompiledPolicy
    ) -> tuple[UpstreamRuntime, InboundHeaders, str, list[tuple[str, str]], Client]:
        """Target, headers and key checks: everything before a client is known."""
        upstream_name, path, query = self._split_target(scope)
        upstream = self.rt.upstream(policy, upstream_name)
        if upstream is None:
            raise NotFound("no upstream of that name is configured", code="upstream.unknown")
        lookup.upstream = upstream_name
        lookup.version = policy.version
        headers = InboundHeaders(scope["headers"])
        headers.check_host(scope.get("http_version", "1.1"))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            headers.check_no_body(self.limits.max_request_body)
        client_id, query = self._authenticate(headers, query, upstream, policy)
        client = policy.clients.get(client_id) if client_id is not None else None
        if client is None:
            raise Unauthenticated("a valid gateway key is required (Bearer or the API's key slot)")
        return upstream, headers, path, query, client

    def refuse_unidentified(self, error: GatewayError) -> GatewayError:
        """The refusal of a request no client could be identified for: a bad or
        missing key, a malformed target or header, an unknown upstream.

        One place, so that refusals which concern no client can be counted and
        aggregated apart from lookups (decision 0001 §5)."""
        return error

    # -- 2. decide ---------------------------------------------------------------------

    def decide(self, request: Identified, lookup: _Lookup) -> Plan:
        """The policy's decision before any call, and who is answered here."""
        rt, policy, route = self.rt, request.policy, request.route
        context = request.context
        decision = rt.evaluate(context, policy)
        lookup.rules = list(decision.rule_ids)
        if not decision.allowed:
            lookup.decision = "deny"
            raise _denied(decision)

        objected = self.objected(request, route.subjects)
        local = objected | set(route.local_subjects)
        # A neutral id the gateway issued stands for someone the upstream did not
        # have: the audit says "missing" for it, and "objected" only for objectors.
        local_outcome: Outcome = "objected" if objected else "missing"
        if local:
            after = rt.evaluate(msgspec.structs.replace(context, outcome=local_outcome), policy)
            _merge_rules(lookup, after)
            if not after.allowed:
                lookup.decision = "deny"
                raise _denied(after)
        forward = None
        if len(local) < len(route.subjects):
            forward = request.upstream.adapter.without_subjects(
                route, request.path, request.query, local
            )
        return Plan(
            decision=decision,
            objected=frozenset(objected),
            local=frozenset(local),
            local_outcome=local_outcome,
            forward=forward,
        )

    def objected(self, request: Identified, subjects: Iterable[Subject]) -> set[Subject]:
        """The subjects among ``subjects`` whose person objected: the one objection check.

        Asked-about subjects and people inside answers both pass through here."""
        pseudonyms = request.pseudonyms
        rt = self.rt
        out: set[Subject] = set()
        for subject in subjects:
            pseudonym = pseudonyms.get(subject) or rt.pseudonyms.pseudonym(
                subject.namespace, subject.identifier
            )
            # A person is the unit: objected under any identifier linked to this one
            # (the store's objections and the policy file's legacy list alike).
            if rt.identity.is_objected(pseudonym):
                out.add(subject)
        return out

    async def settle_ids(self, request: Identified) -> Identified:
        """Ids the gateway issued are answered here, on every replica, and never
        forwarded; every other id of an issuing id space is claimed as real first,
        so no replica can issue it afterwards (:mod:`gateway.identity`)."""
        issued = await issued_among(self.rt.identity, request.upstream.adapter, request.pseudonyms)
        new = tuple(s for s in issued if s not in request.route.local_subjects)
        if not new:
            return request
        route = request.route
        route = msgspec.structs.replace(route, local_subjects=(*route.local_subjects, *new))
        return msgspec.structs.replace(request, route=route)

    async def admit(self, request: Identified, plan: Plan, lookup: _Lookup) -> None:
        """The refusals every lookup meets, vendor-bound, cached or answered here alike.

        Vendor terms and limit rules count lookups, and an open circuit refuses
        them, whether or not this one would reach the vendor: an objected person,
        an id the gateway issued or a cached answer must not be the only 200
        among 429s and 503s. A limiter that cannot be reached refuses every
        lookup with a 503 the same way.
        """
        upstream = request.upstream
        quotas = _quotas(upstream, request.client.id, plan.decision)
        if quotas:
            try:
                wait = await self.rt.limiter.acquire(quotas)
            # Any limiter failure (Redis down, a timeout, a script error) fails closed.
            except Exception as exc:  # noqa: BLE001
                self.rt.limiter_ok = False
                log.error("the rate limiter is unavailable (%s)", type(exc).__name__)
                raise ServiceUnavailable(
                    "the gateway cannot check its rate limits; no lookup is served",
                    code="limit.unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            self.rt.limiter_ok = True
            if wait is not None:
                lookup.decision = "deny"
                lookup.error = "limit.exceeded"
                retry = min(self.limits.max_retry_after, max(1, int(wait + 0.999)))
                raise RateLimited(
                    "the vendor's terms or a limit rule hold this client back; retry later",
                    headers={"Retry-After": str(retry)},
                    extra={"retry_after": retry},
                )
        if upstream.breaker.refusing():
            raise _circuit_open(upstream)

    async def _wait_like_the_vendor(
        self, request: Identified, started: float, commit: asyncio.Future[None]
    ) -> None:
        """Hold an answer the vendor never saw until a vendor-bound one would leave.

        ``commit`` (the lookup's record) completes meanwhile; if it fails, the
        lookup fails at once, as a vendor-bound one fails at its intent. The hold
        runs in this task (no second task to wake), and corrects for how late the
        event loop wakes sleepers (``AnswerTimes.lateness``)."""
        times = self.rt.answer_times
        if self.limits.timing_parity:
            target = times.draw(request.upstream.name, request.route.template)
            correction = times.lateness
        else:
            target = self.limits.local_answer_delay * (0.75 + 0.5 * random.random())
            correction = 0.0
        remaining = target - (time.perf_counter() - started) - correction
        if remaining > 0:
            await asyncio.wait({commit}, timeout=remaining)
            if commit.done() and commit.exception() is not None:
                return  # the caller awaits it and gets the refusal now
            remaining = target - (time.perf_counter() - started) - correction
            if remaining > 0:
                await asyncio.sleep(remaining)
        if self.limits.timing_parity:
            # Late answers count too (the work itself outran the target), so that on
            # average held answers leave when their targets say.
            times.left_at(target, time.perf_counter() - started)

    # -- 3. fetch ----------------------------------------------------------------------

    async def fetch(
        self,
        request: Identified,
        plan: Plan,
        lookup: _Lookup,
        scope: _Scope,
        receive: _Receive,
        started: float,
    ) -> tuple[UpstreamAnswer, CacheKey | None]:
        """The upstream's answer to what is left to ask: from the cache or the transport,
        and the cache key to keep a fresh answer under."""
        rt, upstream = self.rt, request.upstream
        assert plan.forward is not None
        fwd_path, fwd_query = plan.forward
        lookup.decision = "allow"

        cache_key = None
        if rt.cache is not None and request.method == "GET":
            cache_key = rt.cache.key(upstream.name, fwd_path, fwd_query)
            hit = rt.cache.get(cache_key, request.policy.max_cache_age(upstream.name))
            if hit is not None:
                lookup.detail = f"cache hit, {rt.cache.age(hit):.0f} s old"
                return hit.answer, None

        await self._audit("lookup.intent", lookup.request_id or "", lookup, started)
        lookup.intent_committed = True
        upstream_started = time.perf_counter()
        call = self._upstream_request(request, fwd_path, fwd_query, scope, receive)
        if rt.tracing:
            with rt.tracer.start_as_current_span("gateway.upstream", kind=SpanKind.CLIENT) as span:
                span.set_attributes(
                    {"gateway.upstream": upstream.name, "gateway.route": request.route.template}
                )
                raw = await self._send(upstream, call)
                span.set_attribute("http.response.status_code", raw.status)
        else:
            raw = await self._send(upstream, call)
        lookup.upstream_status = raw.status
        rt.metrics.upstream_latency(upstream.name, time.perf_counter() - upstream_started)
        return raw, cache_key

    def _upstream_request(
        self,
        request: Identified,
        path: str,
        query: list[tuple[str, str]],
        scope: _Scope,
        receive: _Receive,
    ) -> UpstreamRequest:
        """The call to send: filtered headers, the upstream's credential, a safe URL."""
        upstream = request.upstream
        out_headers = request.headers.forwardable()
        out_headers.append(("accept-encoding", "identity"))
        if upstream.key_param is not None:
            query = [*query, (upstream.key_param, upstream.credential())]
        elif upstream.key_header is not None:
            out_headers.append((upstream.key_header, upstream.credential()))
        url = upstream.base_url + _quote_path(path) + ("?" + _encode_query(query) if query else "")
        body = None
        if request.method in ("POST", "PUT", "PATCH"):
            body = self._body(scope, receive, request.headers)
        return UpstreamRequest(method=request.method, url=url, headers=out_headers, body=body)

    async def _send(self, upstream: UpstreamRuntime, call: UpstreamRequest) -> UpstreamAnswer:
        """Ask the transport, within the breaker and the upstream's connection slots."""
        if not upstream.breaker.allow():
            raise _circuit_open(upstream)
        slots = upstream.slots
        if slots.locked():
            # Every connection to this upstream is busy: wait briefly, then say so
            # instead of queueing callers until the total timeout (catalogue 2 #21).
            try:
                await asyncio.wait_for(slots.acquire(), self.limits.pool_timeout)
            except TimeoutError:
                raise ServiceUnavailable(
                    "every connection to the upstream is busy; retry shortly",
                    code="upstream.busy",
                    headers={"Retry-After": "1"},
                ) from None
        else:
            await slots.acquire()
        try:
            return await self.rt.transport.send(call)
        except GatewayError as error:
            if error.code not in NOT_A_FAILURE:
                upstream.breaker.failure()
            raise
        finally:
            slots.release()

    # -- 4. answer ---------------------------------------------------------------------

    async def answer(
        self, request: Identified, plan: Plan, raw: UpstreamAnswer, lookup: _Lookup
    ) -> tuple[UpstreamAnswer, bool]:
        """What the caller gets from the upstream's answer, and whether it was neutralized."""
        rt, upstream, route, policy = self.rt, request.upstream, request.route, request.policy
        classification = upstream.adapter.classify(route, raw)
        lookup.outcome = classification.outcome
        if classification.outcome == "throttled":
            upstream.breaker.success()
            retry = _retry_after(raw.retry_after, self.limits.max_retry_after)
            raise RateLimited(
                "the upstream is throttling this gateway; retry later",
                code="upstream.throttled",
                headers={"Retry-After": str(retry)},
                extra={"retry_after": retry},
            )
        if classification.outcome == "error":
            upstream.breaker.failure()
            raise UpstreamError(
                "the upstream answered with an error or an unreadable body",
                code="upstream.bad_response" if raw.status < 500 else "upstream.unavailable",
            )
        upstream.breaker.success()

        context = request.context
        revealed: set[Subject] = set()
        if classification.outcome == "found":
            # An answer that reveals an objected person's identifier is theirs too:
            # neutralized, and the identifier linked to them (gateway.identity).
            revealed = await objected_in_answer(rt.identity, upstream.adapter, route, raw)
            if revealed:
                plan = msgspec.structs.replace(
                    plan, objected=plan.objected | revealed, local=plan.local | revealed
                )
                if revealed == set(route.subjects):
                    lookup.outcome = "objected"
        self._note_outcomes(request, plan, lookup, classification.per_subject)
        neutral: set[Subject] = set(plan.local)
        outcomes = {o for s, o in classification.per_subject.items() if s not in plan.local}
        for outcome in outcomes & NEUTRAL_OUTCOMES:
            after = rt.evaluate(msgspec.structs.replace(context, outcome=outcome), policy)
            _merge_rules(lookup, after)
            if after.neutralize:
                neutral |= {s for s, o in classification.per_subject.items() if o == outcome}
        final = plan.decision
        if "found" in outcomes:
            final = rt.evaluate(msgspec.structs.replace(context, outcome="found"), policy)
            _merge_rules(lookup, final)
        if neutral:
            ids = await neutral_ids(rt.identity, upstream.adapter, route.template, neutral)
            answer = upstream.adapter.neutral_answer(
                route, raw, neutral, upstream.config.neutral.score, ids
            )
            lookup.decision = "neutralize"
        else:
            answer = upstream.adapter.canonical(raw)
        answer = self._people_inside(request, answer, lookup)
        return self._transform(upstream, route, answer, final), bool(neutral)

    def _people_inside(
        self, request: Identified, answer: UpstreamAnswer, lookup: _Lookup
    ) -> UpstreamAnswer:
        """Check every person inside the answer like the person asked about.

        Objected people are left out (counts kept consistent) or, if the policy
        says so, neutralized in place; either way their score leaves nowhere."""
        adapter = request.upstream.adapter
        people = adapter.people(request.route, answer)
        if not people:
            return answer
        asked = set(request.route.subjects)
        withheld = [p for p in people if self.objected(request, p.subjects)]
        for person in people:
            if asked.isdisjoint(person.subjects):
                role: PersonRole = "withheld" if person in withheld else "disclosed"
                lookup.people.append((role, person.subjects))
        if not withheld:
            return answer
        settings = request.policy.policy.settings
        score = None
        if settings.people_inside_answers == "neutralize":
            score = request.upstream.config.neutral.score
        return adapter.withhold(request.route, answer, withheld, score)

    async def answer_locally(
        self, request: Identified, plan: Plan, lookup: _Lookup
    ) -> tuple[UpstreamAnswer, bool]:
        """The neutral answer for a lookup nobody outside the gateway may see:
        everyone asked about is objected, or holds an id the gateway issued."""
        upstream, route = request.upstream, request.route
        ids = await neutral_ids(self.rt.identity, upstream.adapter, route.template, route.subjects)
        answer = upstream.adapter.neutral_answer(
            route, None, set(route.subjects), upstream.config.neutral.score, ids
        )
        lookup.outcome, lookup.decision = plan.local_outcome, "neutralize"
        self._note_outcomes(request, plan, lookup, {})
        return self._transform(upstream, request.route, answer, plan.decision), True

    def _note_outcomes(
        self, request: Identified, plan: Plan, lookup: _Lookup, per_subject: dict[Subject, Outcome]
    ) -> None:
        """Each asked person's own outcome, for the record's people."""
        for subject, pseudonym in request.pseudonyms.items():
            if subject in plan.objected:
                lookup.outcomes[pseudonym] = "objected"
            elif subject in plan.local:
                lookup.outcomes[pseudonym] = "missing"  # an id the gateway issued
            elif subject in per_subject:
                lookup.outcomes[pseudonym] = per_subject[subject]

    # -- steps -------------------------------------------------------------------------

    def _split_target(self, scope: _Scope) -> tuple[str, str, list[tuple[str, str]]]:
        """Upstream name, path after it, and the query in order; strict, no decoding."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw.split(b"?", 1)[0]
        if len(raw_path) + len(scope["query_string"]) > self.limits.max_url_length:
            raise GatewayError(
                "the request URL is too long", status=414, code="request.uri_too_long"
            )
        try:
            text = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("the path must be ASCII", code="request.invalid_path") from None
        if not _valid_path(text):
            raise BadRequest(
                "the path has an empty, dot or encoded segment, or a character this "
                "gateway does not forward",
                code="request.invalid_path",
            )
        try:
            qs = scope["query_string"].decode("ascii")
            query = _parse_query(qs)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(
                "the query string is malformed or too long", code="request.invalid_query"
            ) from None
        if any(_CONTROL.search(k) or _CONTROL.search(v) for k, v in query):
            raise BadRequest("the query holds control characters", code="request.invalid_query")
        _, upstream, rest = text.split("/", 2)
        return upstream, "/" + rest, query

    def _authenticate(
        self,
        headers: InboundHeaders,
        query: list[tuple[str, str]],
        upstream: UpstreamRuntime,
        policy: CompiledPolicy,
    ) -> tuple[str | None, list[tuple[str, str]]]:
        """The client id, and the query with the caller's key removed."""
        bearer = None
        authorization = headers.get_one("authorization", code="client.ambiguous_credentials")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("only Bearer credentials are accepted")
            bearer = token.strip()
        slot = upstream.key_param
        slot_values = [v for k, v in query if k == slot] if slot else []
        if slot:
            query = [(k, v) for k, v in query if k != slot]
        if len(slot_values) > 1 or (
            bearer is not None and slot_values and slot_values[0] != bearer
        ):
            raise BadRequest(
                "two different credentials were sent", code="client.ambiguous_credentials"
            )
        presented = bearer if bearer is not None else (slot_values[0] if slot_values else None)
        if presented is None:
            return None, query
        return self.rt.client_keys.identify(presented, policy), query

    async def _body(
        self, scope: _Scope, receive: _Receive, headers: InboundHeaders
    ) -> AsyncIterator[bytes]:
        """Stream the caller's body to the upstream, refusing it past the limit."""
        limit = self.limits.max_request_body
        declared = headers.get_one("content-length", code="request.invalid_header")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise PayloadTooLarge(f"request bodies are limited to {limit} bytes")
        seen = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                raise PayloadTooLarge(f"request bodies are limited to {limit} bytes")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    def _transform(
        self,
        upstream: UpstreamRuntime,
        route: RouteMatch,
        answer: UpstreamAnswer,
        decision: Decision,
    ) -> UpstreamAnswer:
        if not decision.redact and not decision.coarsen:
            return answer
        return upstream.adapter.transform(route, answer, decision.redact, decision.coarsen)

    def _neutral_headers(self, policy: Any) -> list[tuple[bytes, bytes]]:
        if policy.policy.settings.reveal_neutralized:
            return [(b"x-gateway-neutralized", b"true")]
        return []

    def _entry(
        self, kind: str, request_id: str, lookup: _Lookup, started: float
    ) -> tuple[AuditRecord, list[str]]:
        """The record of one phase and the pseudonyms of everyone in it (for the store's
        subject index), from one pass over the people: their pseudonyms are keyed
        HMACs, paid once per record rather than once for the record and once for the
        index."""
        outcome = None if kind == "lookup.intent" else lookup.outcome
        triples = self._person_triples(lookup, outcome)
        if outcome is None and lookup.people:
            # No outcome, but the answer was read: index everyone it showed too.
            index = [p for p, _, _ in self._person_triples(lookup, "error")]
        else:
            index = [p for p, _, _ in triples]
        return self._record(kind, request_id, lookup, started, triples), index

    def _record(
        self,
        kind: str,
        request_id: str,
        lookup: _Lookup,
        started: float,
        triples: list[tuple[str, PersonRole, str | None]],
    ) -> AuditRecord:
        """The format-2 record of one phase (docs/decisions/0001-audit-record-format.md §3).

        The intent holds what is known before the call; the outcome after an intent
        refers to it by ``request_id`` and repeats none of it; a lookup with no
        intent gets one record with everything.
        """
        now = rfc3339(self.rt.clock())
        # The record's people (decision 0001 §4): those asked about, with their own
        # outcome once known, then everyone the answer disclosed or withheld.
        people = self.rt.people.refs(request_id, triples) if triples else []
        if kind == "lookup.intent":
            return AuditRecord(
                kind=kind,
                time=now,
                request_id=request_id,
                client=lookup.client,
                client_kind=lookup.client_kind,
                purpose=lookup.purpose,
                upstream=lookup.upstream,
                route=lookup.route,
                people=people,
                decision=lookup.decision,
                rules=lookup.rules,
                policy_version=lookup.version,
            )
        latency = round((time.perf_counter() - started) * 1000, 3)
        if lookup.intent_committed:
            return AuditRecord(
                kind=kind,
                time=now,
                request_id=request_id,
                people=people,
                decision=lookup.decision,
                outcome=lookup.outcome,
                upstream_status=lookup.upstream_status,
                status=lookup.status,
                latency_ms=latency,
                error=lookup.error,
                detail=lookup.detail,
            )
        return AuditRecord(
            kind=kind,
            time=now,
            request_id=request_id,
            client=lookup.client,
            client_kind=lookup.client_kind,
            purpose=lookup.purpose,
            upstream=lookup.upstream,
            route=lookup.route,
            people=people,
            decision=lookup.decision,
            rules=lookup.rules,
            policy_version=lookup.version,
            outcome=lookup.outcome,
            upstream_status=lookup.upstream_status,
            status=lookup.status,
            latency_ms=latency,
            error=lookup.error,
            detail=lookup.detail,
        )

    def _person_triples(
        self, lookup: _Lookup, outcome: str | None
    ) -> list[tuple[str, PersonRole, str | None]]:
        triples: list[tuple[str, PersonRole, str | None]] = [
            (p, "asked", lookup.outcomes.get(p, outcome) if outcome is not None else None)
            for p in lookup.subjects
        ]
        if outcome is None:
            return triples  # an intent knows only who was asked
        pseudonym = self.rt.pseudonyms.pseudonym
        for role, shown in lookup.people:
            person_outcome = "objected" if role == "withheld" else "found"
            # One reference per identifier the answer showed, so that subject access
            # by any of them finds this record.
            triples += [(pseudonym(s.namespace, s.identifier), role, person_outcome) for s in shown]
        return triples

    async def _audit(self, kind: str, request_id: str, lookup: _Lookup, started: float) -> None:
        rt = self.rt
        record, index = self._entry(kind, request_id, lookup, started)
        try:
            await rt.audit.append(record, index)
        except AuditUnavailable:
            raise
        except Exception as exc:  # any store failure must fail closed
            raise AuditUnavailable("the audit log cannot take records; no score is served") from exc
        if len(rt.backlog):
            # The store takes records again: close lookups it refused earlier now.
            await rt.backlog.flush()


# The gateway's own rules about purposes keep their own error code, which
# integrators already switch on; the problem names the rule like any other denial.
_PURPOSE_RULES = {
    "policy.unknown-purpose": "purpose.not_registered",
    "policy.purpose-not-registered": "purpose.not_registered",
}


def _denied(decision: Decision) -> PolicyDenied:
    rule = decision.deny
    return PolicyDenied(
        rule.reason if rule is not None else "denied by policy",
        code=_PURPOSE_RULES.get(rule.id) if rule is not None else None,
        extra={
            "rule": rule.id if rule is not None else None,
            "reason": rule.reason if rule is not None else None,
            "policy_version": decision.policy_version,
        },
    )


# What quote() and urlencode() leave as it is: text made only of these needs neither.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_PATH_AS_IS = re.compile(f"[A-Za-z0-9{re.escape(_PATH_SAFE)}]*")
_QUERY_AS_IS = re.compile(r"[A-Za-z0-9_.~-]*")


def _valid_path(text: str) -> bool:
    """``/upstream/rest``: two segments or more, none empty, ``.`` or ``..``, each
    of the characters :data:`_SEGMENT` allows (one match, not one per segment)."""
    if _PATH.fullmatch(text) is None:
        return False
    ended = text + "/"
    return "/./" not in ended and "/../" not in ended


def _quote_path(path: str) -> str:
    """``quote(path, safe=_PATH_SAFE)``, without the call for a path that has nothing
    to escape (every path the gateway accepted)."""
    if _PATH_AS_IS.fullmatch(path):
        return path
    return quote(path, safe=_PATH_SAFE)


def _encode_query(query: list[tuple[str, str]]) -> str:
    """``urlencode(query)``, joined directly when no name or value needs escaping."""
    if all(_QUERY_AS_IS.fullmatch(n) and _QUERY_AS_IS.fullmatch(v) for n, v in query):
        return "&".join(f"{n}={v}" for n, v in query)
    return urlencode(query)


def _parse_query(qs: str) -> list[tuple[str, str]]:
    """``parse_qsl(qs, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)``.

    A query without ``%`` or ``+`` has nothing to decode, and splitting it here
    gives the same pairs in about half the time (the caller's key is in every
    query, so every lookup parses one).
    """
    if "%" in qs or "+" in qs:
        return parse_qsl(
            qs, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_QUERY_FIELDS
        )
    if qs.count("&") >= MAX_QUERY_FIELDS:
        raise ValueError("too many query fields")
    return [(name, value) for name, _, value in (f.partition("=") for f in qs.split("&") if f)]


def _peer(scope: _Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _circuit_open(upstream: UpstreamRuntime) -> ServiceUnavailable:
    return ServiceUnavailable(
        "the upstream is failing; the gateway is not calling it for a moment",
        code="upstream.circuit_open",
        headers={"Retry-After": str(int(upstream.breaker.reset_after) or 1)},
    )


def _merge_rules(lookup: _Lookup, decision: Decision) -> None:
    for rule_id in decision.rule_ids:
        if rule_id not in lookup.rules:
            lookup.rules.append(rule_id)


def _quotas(upstream: UpstreamRuntime, client: str, decision: Decision) -> list[Quota]:
    quotas: list[Quota] = []
    for rule_id, limit in decision.limits:
        key = (
            f"{rule_id}:upstream:{upstream.name}"
            if limit.per == "upstream"
            else f"{rule_id}:client:{client}"
        )
        quotas.append(Quota(key, limit.calls_per_second, limit.calls_per_day))
    terms = upstream.config.terms
    if terms.calls_per_second is not None or terms.calls_per_day is not None:
        quotas.append(
            Quota(f"terms:upstream:{upstream.name}", terms.calls_per_second, terms.calls_per_day)
        )
    return quotas


def _retry_after(value: str | None, cap: int) -> int:
    """The upstream's Retry-After in seconds, at least 1 and at most ``cap``."""
    if value is not None and value.strip().isdigit():
        return max(1, min(cap, int(value.strip())))
    return min(cap, 1)


async def _respond(
    send: _Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
