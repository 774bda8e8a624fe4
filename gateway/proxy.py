"""The request path: authenticate → context → decide → forward → classify → transform → audit.

Every proxied request is one :meth:`Proxy.__call__`, a raw ASGI handler mounted in
the Litestar app: the hot path skips the framework's routing, request and response
objects (``reference/performance.md``: they cost as much as the server itself).

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
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp
import msgspec
from opentelemetry.trace import SpanKind
from yarl import URL

from gateway.audit.record import AuditRecord, PersonRef, rfc3339
from gateway.errors import (
    PROBLEM_CONTENT_TYPE,
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
    UpstreamTimeout,
    problem_body,
)
from gateway.headers import InboundHeaders
from gateway.limits import Quota
from gateway.policies.compile import CompiledPolicy
from gateway.policies.model import Decision, LookupContext, Outcome
from gateway.runtime import GatewayRuntime, UpstreamRuntime
from gateway.upstreams.base import InvalidSubject, RouteMatch, Subject, UpstreamAnswer

# A path segment may hold RFC 3986 unreserved characters and a few sub-delims.
# No "%" (no encoded slashes, dots or NULs to decode differently later), no ";"
# (matrix parameters), no "\\"; ".." and empty segments are refused separately
# (Envoy CVE-2019-9901, CVE-2021-29492).
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_QUERY_FIELDS = 64
NEUTRAL_OUTCOMES: frozenset[str] = frozenset({"missing", "pending", "objected"})

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


class Proxy:
    """The ASGI handler for ``/{upstream}/{path}``."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self.rt = runtime
        self.limits = runtime.settings.limits
        limits = self.limits
        self._timeout = aiohttp.ClientTimeout(
            total=limits.total_timeout,
            sock_connect=limits.connect_timeout,
            sock_read=limits.read_timeout,
        )
        # Request ids: a keyed permutation of a counter (gateway/requestid.py), so
        # they tell a caller nothing about other traffic and cost no system call.
        self._next_id = runtime.request_ids.next_id

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
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
        rt = self.rt
        started = time.perf_counter()
        request_id = self._next_id()
        lookup.request_id = request_id
        try:
            answer, extra_headers = await self._handle(scope, receive, request_id, lookup)
        except GatewayError as error:
            if lookup.client is None and rt.refusals is not None:
                # Refused before any client was identified: not a lookup about anyone.
                # Limited per source and recorded in aggregates (gateway/refusals.py).
                error = rt.refusals.refuse(_peer(scope), request_id, error)
                lookup.refused_stranger = True
            lookup.status = error.status
            lookup.error = error.code
            lookup.decision = lookup.decision or "error"
            body = problem_body(error, request_id)
            headers = [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
            ]
            if isinstance(error, AuditUnavailable) and lookup.intent_committed:
                # The intent is in the log but its outcome is not: record the failure
                # as soon as the store takes records again (no score was returned).
                lookup.decision = "error"
                rt.backlog.add(self._record("lookup", request_id, lookup, started), lookup.subjects)
            if not isinstance(error, AuditUnavailable) and not lookup.refused_stranger:
                # Every lookup attempt is audited, refused ones too (unknown key,
                # bad path): each X-Request-Id a caller holds has its record. The
                # error is already the answer and holds no score, so a store that
                # cannot take the record now gets it from the backlog later.
                try:
                    await self._audit("lookup", request_id, lookup, started)
                except AuditUnavailable:
                    record = self._record("lookup", request_id, lookup, started)
                    rt.backlog.add(record, lookup.subjects)
            rt.metrics.lookup(lookup, time.perf_counter() - started)
            await _respond(send, error.status, headers, body)
            return
        headers = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
            (b"x-request-id", request_id.encode()),
            *extra_headers,
        ]
        rt.metrics.lookup(lookup, time.perf_counter() - started)
        await _respond(send, answer.status, headers, answer.body)

    async def _handle(
        self, scope: _Scope, receive: _Receive, request_id: str, lookup: _Lookup
    ) -> tuple[UpstreamAnswer, list[tuple[bytes, bytes]]]:
        rt = self.rt
        started = time.perf_counter()
        policy = rt.policy.current  # one snapshot: the whole request is decided under it
        upstream_name, path, query = self._split_target(scope)
        upstream = rt.upstream(policy, upstream_name)
        if upstream is None:
            raise NotFound("no upstream of that name is configured", code="upstream.unknown")
        lookup.upstream = upstream_name
        lookup.version = policy.version
        headers = InboundHeaders(scope["headers"])
        headers.check_host(scope.get("http_version", "1.1"))
        method: str = scope["method"]
        if method not in ("POST", "PUT", "PATCH"):
            headers.check_no_body(self.limits.max_request_body)

        client_id, query = self._authenticate(headers, query, upstream, policy)
        client = policy.clients.get(client_id) if client_id is not None else None
        if client is None:
            raise Unauthenticated("a valid gateway key is required (Bearer or the API's key slot)")
        lookup.client, lookup.client_kind = client.id, client.kind

        purpose = headers.get_one("x-purpose", code="request.ambiguous_purpose")
        if purpose is None:
            purpose = client.default_purpose
        if purpose is None:
            raise BadRequest(
                "this client has no default purpose; send X-Purpose", code="purpose.missing"
            )
        # Exact match only: no case folding, no trimming, no Unicode normalisation. A
        # client registered for a purpose may also name a narrower one under it.
        if not policy.purpose_allowed(client.id, purpose):
            lookup.decision = "deny"
            raise PolicyDenied(
                "this client is not registered for that purpose", code="purpose.not_registered"
            )
        lookup.purpose = purpose

        try:
            route = upstream.adapter.match(method, path, query)
        except InvalidSubject as exc:
            raise BadRequest(str(exc), code="request.invalid_subject") from None
        if route is None:
            if method not in ("GET", "HEAD", "POST"):
                raise MethodNotAllowed(f"{method} is not supported here")
            raise NotFound("this API has no such route", code="route.unknown")
        lookup.route = route.template
        pseudonyms = {s: rt.pseudonyms.pseudonym(s.namespace, s.identifier) for s in route.subjects}
        lookup.subjects = list(pseudonyms.values())

        context = LookupContext(
            client=client.id,
            client_kind=client.kind,
            purpose=purpose,
            upstream=upstream_name,
            route=route.template,
        )
        decision = rt.evaluate(context, policy)
        lookup.rules = list(decision.rule_ids)
        if not decision.allowed:
            lookup.decision = "deny"
            raise _denied(decision)

        objected = {s for s, p in pseudonyms.items() if p in policy.objections}
        local = objected | set(route.local_subjects)
        # A neutral id the gateway issued stands for someone the upstream did not
        # have: the audit says "missing" for it, and "objected" only for objectors.
        local_outcome: Outcome = "objected" if objected else "missing"
        if local:
            local_decision = rt.evaluate(
                msgspec.structs.replace(context, outcome=local_outcome), policy
            )
            _merge_rules(lookup, local_decision)
            if not local_decision.allowed:
                lookup.decision = "deny"
                raise _denied(local_decision)

        remaining = None
        if len(local) < len(route.subjects):
            remaining = upstream.adapter.without_subjects(route, path, query, local)
        if remaining is None:
            # Everyone asked about is answered here: objected, or a neutral id we issued.
            # Wait about as long as a real round trip, so timing tells nothing.
            await asyncio.sleep(upstream.typical_round_trip(random.random()))
            answer = upstream.adapter.neutral_answer(
                route, None, set(route.subjects), upstream.config.neutral.score
            )
            lookup.outcome, lookup.decision = local_outcome, "neutralize"
            answer = self._transform(upstream, route, answer, decision)
            lookup.status = answer.status
            await self._audit("lookup", request_id, lookup, started)
            return answer, self._neutral_headers(policy)
        fwd_path, fwd_query = remaining
        lookup.decision = "allow"

        cache_key = None
        raw: UpstreamAnswer | None = None
        if rt.cache is not None and method == "GET":
            cache_key = rt.cache.key(upstream_name, fwd_path, fwd_query)
            hit = rt.cache.get(cache_key, policy.max_cache_age(upstream_name))
            if hit is not None:
                raw = hit.answer
                lookup.detail = f"cache hit, {rt.cache.age(hit):.0f} s old"

        if raw is None:
            # Vendor terms and limit rules count calls to the upstream; cache hits
            # and local answers make none.
            quotas = _quotas(upstream, client.id, decision)
            if quotas:
                wait = await rt.limiter.acquire(quotas)
                if wait is not None:
                    lookup.decision = "deny"
                    lookup.error = "limit.exceeded"
                    retry = min(self.limits.max_retry_after, max(1, int(wait + 0.999)))
                    raise RateLimited(
                        "the vendor's terms or a limit rule hold this client back; retry later",
                        headers={"Retry-After": str(retry)},
                        extra={"retry_after": retry},
                    )
            await self._audit("lookup.intent", request_id, lookup, started)
            lookup.intent_committed = True
            upstream_started = time.perf_counter()
            if rt.tracing:
                with rt.tracer.start_as_current_span(
                    "gateway.upstream", kind=SpanKind.CLIENT
                ) as span:
                    span.set_attributes(
                        {"gateway.upstream": upstream_name, "gateway.route": route.template}
                    )
                    raw = await self._forward(
                        upstream, method, fwd_path, fwd_query, headers, scope, receive
                    )
                    span.set_attribute("http.response.status_code", raw.status)
            else:
                raw = await self._forward(
                    upstream, method, fwd_path, fwd_query, headers, scope, receive
                )
            upstream.observe_round_trip(time.perf_counter() - started)
            lookup.upstream_status = raw.status
            rt.metrics.upstream_latency(upstream_name, time.perf_counter() - upstream_started)
        else:
            cache_key = None  # already cached

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
        if (
            cache_key is not None
            and rt.cache is not None
            and classification.outcome
            in (
                "found",
                "missing",
            )
        ):
            rt.cache.put(cache_key, raw)

        neutral: set[Subject] = set(objected)
        outcomes = {o for s, o in classification.per_subject.items() if s not in objected}
        for outcome in outcomes & NEUTRAL_OUTCOMES:
            after = rt.evaluate(msgspec.structs.replace(context, outcome=outcome), policy)
            _merge_rules(lookup, after)
            if after.neutralize:
                neutral |= {s for s, o in classification.per_subject.items() if o == outcome}
        final = decision
        if "found" in outcomes:
            final = rt.evaluate(msgspec.structs.replace(context, outcome="found"), policy)
            _merge_rules(lookup, final)
        if neutral:
            answer = upstream.adapter.neutral_answer(
                route, raw, neutral, upstream.config.neutral.score
            )
            lookup.decision = "neutralize"
        else:
            answer = upstream.adapter.canonical(raw)
        answer = self._transform(upstream, route, answer, final)
        lookup.status = answer.status
        await self._audit("lookup", request_id, lookup, started)
        return answer, self._neutral_headers(policy) if neutral else []

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
        segments = text.split("/")
        if (
            segments[0] != ""
            or len(segments) < 3
            or any(s in ("", ".", "..") or not _SEGMENT.fullmatch(s) for s in segments[1:])
        ):
            raise BadRequest(
                "the path has an empty, dot or encoded segment, or a character this "
                "gateway does not forward",
                code="request.invalid_path",
            )
        try:
            qs = scope["query_string"].decode("ascii")
            query = parse_qsl(
                qs, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_QUERY_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(
                "the query string is malformed or too long", code="request.invalid_query"
            ) from None
        if any(_CONTROL.search(k) or _CONTROL.search(v) for k, v in query):
            raise BadRequest("the query holds control characters", code="request.invalid_query")
        return segments[1], "/" + "/".join(segments[2:]), query

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

    async def _forward(
        self,
        upstream: UpstreamRuntime,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: InboundHeaders,
        scope: _Scope,
        receive: _Receive,
    ) -> UpstreamAnswer:
        if not upstream.breaker.allow():
            raise ServiceUnavailable(
                "the upstream is failing; the gateway is not calling it for a moment",
                code="upstream.circuit_open",
                headers={"Retry-After": str(int(upstream.breaker.reset_after) or 1)},
            )
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
            return await self._exchange(upstream, method, path, query, headers, scope, receive)
        finally:
            slots.release()

    async def _exchange(
        self,
        upstream: UpstreamRuntime,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: InboundHeaders,
        scope: _Scope,
        receive: _Receive,
    ) -> UpstreamAnswer:
        out_headers = headers.forwardable()
        out_headers.append(("accept-encoding", "identity"))
        if upstream.key_param is not None:
            query = [*query, (upstream.key_param, upstream.credential())]
        elif upstream.key_header is not None:
            out_headers.append((upstream.key_header, upstream.credential()))
        url = URL(
            upstream.base_url
            + quote(path, safe="/:@!$&'()*+,;=-._~")
            + ("?" + urlencode(query) if query else ""),
            encoded=True,
        )
        body = self._body(scope, receive, headers) if method in ("POST", "PUT", "PATCH") else None
        limits = self.limits
        try:
            async with self.rt.session.request(
                method,
                url,
                headers=out_headers,
                data=body,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if 300 <= response.status < 400:
                    upstream.breaker.failure()
                    raise UpstreamError(
                        "the upstream answered with a redirect, which is never followed",
                        code="upstream.unexpected_redirect",
                    )
                declared = response.content_length
                if declared is not None and declared > limits.max_response_body:
                    raise UpstreamError(
                        "the upstream answer is too large", code="upstream.response_too_large"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > limits.max_response_body:
                        raise UpstreamError(
                            "the upstream answer is too large", code="upstream.response_too_large"
                        )
                    chunks.append(chunk)
                return UpstreamAnswer(
                    status=response.status,
                    content_type=response.headers.get("content-type", ""),
                    body=b"".join(chunks),
                    retry_after=response.headers.get("retry-after"),
                    headers=tuple(
                        (k.lower(), v)
                        for k, v in response.headers.items()
                        if k.lower().startswith("x-") or k.lower() == "retry-after"
                    ),
                )
        except TimeoutError:
            upstream.breaker.failure()
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except aiohttp.ClientSSLError:
            upstream.breaker.failure()
            raise UpstreamError(
                "the upstream's TLS certificate or handshake was refused", code="upstream.tls_error"
            ) from None
        except aiohttp.ClientConnectorError:
            upstream.breaker.failure()
            raise UpstreamError(
                "the upstream could not be reached", code="upstream.unavailable"
            ) from None
        except aiohttp.ClientError:
            upstream.breaker.failure()
            raise UpstreamError(
                "the upstream connection failed", code="upstream.unavailable"
            ) from None

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

    def _record(self, kind: str, request_id: str, lookup: _Lookup, started: float) -> AuditRecord:
        """The format-2 record of one phase (docs/decisions/0001-audit-record-format.md §3).

        The intent holds what is known before the call; the outcome after an intent
        refers to it by ``request_id`` and repeats none of it; a lookup with no
        intent gets one record with everything.
        """
        now = rfc3339(self.rt.clock())
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
                people=self._people(request_id, lookup, None),
                decision=lookup.decision,
                rules=lookup.rules,
                policy_version=lookup.version,
            )
        latency = round((time.perf_counter() - started) * 1000, 3)
        people = self._people(request_id, lookup, lookup.outcome)
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

    def _people(self, request_id: str, lookup: _Lookup, outcome: str | None) -> list[PersonRef]:
        if not lookup.subjects:
            return []
        return self.rt.people.refs(request_id, ((p, "asked", outcome) for p in lookup.subjects))

    async def _audit(self, kind: str, request_id: str, lookup: _Lookup, started: float) -> None:
        rt = self.rt
        record = self._record(kind, request_id, lookup, started)
        try:
            await rt.audit.append(record, lookup.subjects)
        except AuditUnavailable:
            raise
        except Exception as exc:  # any store failure must fail closed
            raise AuditUnavailable("the audit log cannot take records; no score is served") from exc
        if len(rt.backlog):
            # The store takes records again: close lookups it refused earlier now.
            await rt.backlog.flush()


def _denied(decision: Decision) -> PolicyDenied:
    rule = decision.deny
    return PolicyDenied(
        rule.reason if rule is not None else "denied by policy",
        extra={
            "rule": rule.id if rule is not None else None,
            "reason": rule.reason if rule is not None else None,
            "policy_version": decision.policy_version,
        },
    )


def _peer(scope: _Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


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
