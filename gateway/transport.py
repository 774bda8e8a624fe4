"""The seam between the request path and the network: ``Transport.send(request) -> answer``.

The proxy decides *what* to ask an upstream; a :class:`Transport` asks it and
hands back an :class:`~gateway.upstreams.base.UpstreamAnswer`, or raises a
:class:`~gateway.errors.GatewayError` with a stable code. This is httpx's
transport idea: the production :class:`AiohttpTransport` speaks HTTP on a
shared connection pool; :class:`MockTransport` answers from a function in
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

import aiohttp
from yarl import URL

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.settings import Limits
from gateway.upstreams.base import UpstreamAnswer

#: Failures that say nothing about the upstream's health (our own size limit):
#: the circuit breaker does not count them.
NOT_A_FAILURE = frozenset({"upstream.response_too_large"})


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


class AiohttpTransport:
    """HTTP over one shared aiohttp session; timeouts and sizes from ``Limits``."""

    def __init__(self, session: aiohttp.ClientSession, limits: Limits) -> None:
        self._session = session
        self._max_body = limits.max_response_body
        self._timeout = aiohttp.ClientTimeout(
            total=limits.total_timeout,
            sock_connect=limits.connect_timeout,
            sock_read=limits.read_timeout,
        )

    async def send(self, request: UpstreamRequest) -> UpstreamAnswer:
        try:
            async with self._session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if 300 <= response.status < 400:
                    raise UpstreamError(
                        "the upstream answered with a redirect, which is never followed",
                        code="upstream.unexpected_redirect",
                    )
                return await self._read(response)
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except aiohttp.ClientSSLError:
            raise UpstreamError(
                "the upstream's TLS certificate or handshake was refused", code="upstream.tls_error"
            ) from None
        except aiohttp.ClientConnectorError:
            raise UpstreamError(
                "the upstream could not be reached", code="upstream.unavailable"
            ) from None
        except aiohttp.ClientError:
            raise UpstreamError(
                "the upstream connection failed", code="upstream.unavailable"
            ) from None

    async def _read(self, response: aiohttp.ClientResponse) -> UpstreamAnswer:
        declared = response.content_length
        if declared is not None and declared > self._max_body:
            raise UpstreamError(
                "the upstream answer is too large", code="upstream.response_too_large"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_body:
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
