"""The seam between the request path and the network: ``Transport.send(request) -> answer``.

The proxy decides *what* to ask an upstream; a :class:`Transport` asks it and
hands back an :class:`~gateway.upstreams.base.UpstreamAnswer`, or raises a
:class:`~gateway.errors.GatewayError` with a stable code. This is httpx's
transport idea: the production :class:`~gateway.h1.H1Transport` speaks
HTTP/1.1 over kept-alive connections; :class:`MockTransport` answers from a function in
memory, so a unit test of the request path needs no server at all. End-to-end
tests keep the real simulator on loopback.

What every transport guarantees, so the proxy can rely on it:

* redirects are never followed (a 3xx is ``upstream.unexpected_redirect``);
* bodies are bounded (``upstream.response_too_large``), never read without limit;
* only ``X-*`` and ``Retry-After`` response headers are kept, lower-cased.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.upstreams.base import UpstreamAnswer

#: Failures that say nothing about the upstream's health (our own size limits,
#: a caller's body past its limit): the circuit breaker does not count them.
NOT_A_FAILURE = frozenset({"upstream.response_too_large", "request.too_large"})


@dataclass(frozen=True)
class UpstreamRequest:
    """One call to an upstream, fully built: URL with the credential, filtered headers."""

    method: str
    url: str  # already percent-encoded, never re-encoded
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes] | None = None


class Transport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamAnswer:
        """The upstream's answer, or a ``GatewayError`` (timeout, unreachable, too large)."""


Handler = Callable[[UpstreamRequest], "UpstreamAnswer | Awaitable[UpstreamAnswer]"]


@dataclass
class MockTransport:
    """Answers from ``handler`` in memory and remembers every request (for unit tests).

    ``handler`` may be a plain or an ``async`` function, and may raise a
    ``GatewayError`` to stand for a network failure.
    """

    handler: Handler
    requests: list[UpstreamRequest] = field(default_factory=list)

    async def send(self, request: UpstreamRequest) -> UpstreamAnswer:
        self.requests.append(request)
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            return await answer
        return answer
