"""Typed errors with a stable machine ``code``, rendered as RFC 9457 problem details.

Every error a caller can see is a :class:`GatewayError`. It carries the HTTP status,
a stable ``code`` that integrators can switch on, and a human ``detail`` that never
echoes raw personal data, credentials or stack traces. One function renders them as
``application/problem+json``; the app installs it for every exception type, so an
unexpected exception becomes a generic 500 problem without internals.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The RFC 9457 body. ``type`` is a stable URN built from ``code``."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    request_id: str | None = None
    rule: str | None = None
    reason: str | None = None
    policy_version: str | None = None
    retry_after: int | None = None
    errors: list[str] | None = None


class GatewayError(Exception):
    """An error with a stable code; subclasses fix ``status`` and ``title``."""

    status: int = 500
    title: str = "Internal error"
    code: str = "internal.error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None and status != self.status:
            self.status = status
            self.title = HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extra = extra or {}

    def problem(self, request_id: str | None) -> Problem:
        return Problem(
            type=f"urn:score-gateway:problem:{self.code}",
            title=self.title,
            status=self.status,
            code=self.code,
            detail=self.detail,
            request_id=request_id,
            **self.extra,
        )


class BadRequest(GatewayError):
    status, title, code = 400, "Bad request", "request.invalid"


class Unauthenticated(GatewayError):
    status, title, code = 401, "Unauthenticated", "client.unauthenticated"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="score-gateway"'})
        super().__init__(detail, **kwargs)


class Forbidden(GatewayError):
    status, title, code = 403, "Forbidden", "client.forbidden"


class PolicyDenied(GatewayError):
    status, title, code = 403, "Denied by policy", "policy.denied"


class NotFound(GatewayError):
    status, title, code = 404, "Not found", "route.not_found"


class MethodNotAllowed(GatewayError):
    status, title, code = 405, "Method not allowed", "request.method_not_allowed"


class PayloadTooLarge(GatewayError):
    status, title, code = 413, "Payload too large", "request.too_large"


class RateLimited(GatewayError):
    status, title, code = 429, "Too many requests", "limit.exceeded"


class UpstreamError(GatewayError):
    status, title, code = 502, "Bad gateway", "upstream.error"


class ServiceUnavailable(GatewayError):
    status, title, code = 503, "Service unavailable", "service.unavailable"


class AuditUnavailable(ServiceUnavailable):
    """The audit store cannot take a record: no score may leave (fail closed)."""

    code = "audit.unavailable"


class UpstreamTimeout(GatewayError):
    status, title, code = 504, "Gateway timeout", "upstream.timeout"


_problem_encoder = msgspec.json.Encoder()


def problem_body(error: GatewayError, request_id: str | None) -> bytes:
    return _problem_encoder.encode(error.problem(request_id))


def render_problem(
    error: GatewayError, request_id: str | None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one rendering of an error as an RFC 9457 answer: ``(status, headers, body)``.

    RFC 9457 (Problem Details for HTTP APIs) section 3: the body is a JSON object
    with ``type``, ``title``, ``status`` and ``detail``, served as
    ``application/problem+json``; ``code`` and ``request_id`` are our extension
    members. The proxy, the admin routes, the app's exception handlers and the
    server's own refusals all answer through here. ``request_id`` is always one the
    gateway made (or ``None`` before there is a request): never a caller's header.
    """
    body = problem_body(error, request_id)
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    return error.status, headers, body
