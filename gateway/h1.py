"""A lean HTTP/1.1 client for upstream calls: :class:`H1Transport`.

Every vendor-bound lookup makes one upstream call, so the client's own cost is
paid on every request. aiohttp's ``ClientSession`` spent about 300 µs of CPU per
call here against a loopback nginx; what the call needs is a pooled keep-alive
connection, one write, and llhttp (the parser Node.js uses, through httptools,
which uvicorn already brings) reading the answer. This module does that and
nothing else, in about 65 µs (``bench/README.md`` has the measurement).

What it guarantees, besides what every :class:`~gateway.transport.Transport` does
(no redirect followed, bounded bodies, only ``X-*`` and ``Retry-After`` kept):

* **Bounded in time.** A connect timeout, a read timeout between any two reads
  (waiting for the first byte included) and a total timeout for the whole call.
* **Bounded in size.** Status line and headers at most 64 KiB and 128 fields; a
  body larger than the limit is cut off as soon as it is declared or seen.
* **Strict parsing.** llhttp in its strict mode: conflicting ``Content-Length``
  headers, bad chunk sizes and bare LFs are errors, never guesses; the connection
  is then closed, never reused.
* **Nothing injected.** A header name outside RFC 9110's token set, or a value
  with CR, LF or NUL, is refused before a byte is sent.
* **A connection is reused only when its answer ended cleanly** and both sides
  allow keep-alive; anything unexpected (a cancelled caller, a timeout, data
  nobody asked for) closes it. A reused connection that the upstream had closed
  while idle is retried once on a fresh one, for GET and HEAD only, and only if
  not a byte of answer came back (the race every keep-alive client meets).
* **No ambient configuration.** No proxy from the environment, no cookies, no
  decompression; TLS verifies the certificate and the host name with the
  system's trust store (``SSL_CERT_FILE`` is honoured, as by OpenSSL).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway import __version__
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.settings import Limits
from gateway.transport import UpstreamRequest
from gateway.upstreams.base import UpstreamAnswer

MAX_HEAD = 64 * 1024  # status line and header fields together
MAX_FIELDS = 128
KEEP_IDLE = 15.0  # seconds an idle connection is kept (aiohttp's default too)
MAX_IDLE = 256  # idle connections kept per origin
USER_AGENT = f"score-gateway/{__version__}"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f#]")
_NO_BODY_METHODS = frozenset({"HEAD"})
_RETRYABLE = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a call goes: parsed once per base URL, then looked up."""

    scheme: str
    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, prefix: str) -> Origin:
        parts = urlsplit(prefix)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(
                "the upstream address is not an http:// or https:// URL with a host",
                code="upstream.unavailable",
            )
        if parts.username is not None or parts.password is not None:
            raise UpstreamError(
                "the upstream address carries a user name or password; put the "
                "credential in the policy's credential block",
                code="upstream.unavailable",
            )
        default = 443 if parts.scheme == "https" else 80
        try:
            port = parts.port or default
        except ValueError:
            raise UpstreamError(
                "the upstream address has an invalid port", code="upstream.unavailable"
            ) from None
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(parts.scheme, host, port, shown if port == default else f"{shown}:{port}")


class _Failed(Exception):
    """How the protocol tells the waiting call that the exchange failed.

    ``stale``: the upstream closed the connection before a byte of the answer,
    which on a kept-alive connection means it had closed it while idle."""

    def __init__(self, error: GatewayError, *, stale: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.stale = stale


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the one exchange it carries at a time."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._future: asyncio.Future[UpstreamAnswer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._read_timeout = 0.0
        self._deadline = 0.0
        self._received = 0
        self._progress = 0  # self._received when the head ended or body bytes last came
        self._head_method = False
        self._reusable = False
        self._reset()

    def _reset(self) -> None:
        self._fields = 0
        self._head_size = 0
        self._headers: list[tuple[str, str]] = []
        self._content_type = ""
        self._retry_after: str | None = None
        self._delimited = False  # Content-Length or chunked: the body's end is known
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False

    # -- the call's side ----------------------------------------------------------------

    def start(
        self, data: bytes, head_method: bool, read_timeout: float, deadline: float
    ) -> asyncio.Future[UpstreamAnswer]:
        assert self.transport is not None
        assert self._future is None
        loop = asyncio.get_running_loop()
        self._future = loop.create_future()
        self._received = self._progress = 0
        self._reusable = False
        self._head_method = head_method
        self._read_timeout, self._deadline = read_timeout, deadline
        self._arm(loop)
        self.transport.write(data)
        return self._future

    @property
    def reusable(self) -> bool:
        return self._reusable and not self.closed and self._future is None

    def close(self) -> None:
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    # -- timers -------------------------------------------------------------------------

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        at = min(loop.time() + self._read_timeout, self._deadline)
        if self._timer is not None:
            if at == self._timer_at:
                # The deadline's timer, perhaps due but not run yet (asyncio's loop runs
                # I/O callbacks before timers): replacing it would push the deadline back.
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeout("the upstream did not answer in time"))

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._future is None:
            # Bytes nobody asked for: the connection's state is unknown.
            self.close()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, GatewayError):
                self._fail(cause)
            else:
                self._fail(_bad_http())
            return
        except httptools.HttpParserUpgrade:
            self._fail(_bad_http())
            return
        except httptools.HttpParserError:
            self._fail(_bad_http())
            return
        if self._future is not None and not self.closed:
            if self._received - self._progress > MAX_HEAD:
                # httptools gathers a header field whole before it calls on_header:
                # the bytes before the header's end are bounded here instead, and so
                # are a chunked body's trailer fields and chunk-size lines.
                self._fail(
                    UpstreamError(
                        "the upstream answer's header is too large", code="upstream.unavailable"
                    )
                )
                return
            self._arm(asyncio.get_running_loop())

    def eof_received(self) -> bool:
        return False  # close; connection_lost finishes an answer that ends at EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        if self._future is None:
            return
        if self._headers_done and not self._delimited and not self._head_method:
            self._complete()  # an answer without a length ends where the connection does
            return
        self._fail(
            UpstreamError("the upstream closed the connection", code="upstream.unavailable"),
            stale=self._received == 0,
        )

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._future is None:
            # An answer after the one asked for, in the same read: data nobody asked for.
            raise _bad_http()
        self._reset()

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise UpstreamError(
                "the upstream answer has too many header fields", code="upstream.unavailable"
            )
        self._count_head(len(name) + len(value) + 4)
        lower = name.lower()
        if lower == b"content-type":
            if not self._content_type:
                self._content_type = value.decode("latin-1")
        elif lower == b"content-length":
            self._delimited = True
            if not value.isdigit():
                raise _bad_http()
            # A HEAD, 204 or 304 answer has no body, whatever length it declares.
            bodiless = self._head_method or self._parser.get_status_code() in (204, 304)
            if int(value) > self._max_body and not bodiless:
                raise _too_large()
        elif lower == b"transfer-encoding":
            self._delimited = True
        elif lower == b"retry-after":
            text = value.decode("latin-1")
            if self._retry_after is None:
                self._retry_after = text
            self._headers.append(("retry-after", text))
        elif lower.startswith(b"x-"):
            self._headers.append((lower.decode("latin-1"), value.decode("latin-1")))

    def _count_head(self, size: int) -> None:
        # A head read whole in one go never meets data_received's bound: this one holds.
        self._head_size += size
        if self._head_size > MAX_HEAD:
            raise UpstreamError(
                "the upstream answer's header is too large", code="upstream.unavailable"
            )

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._progress = self._received
        status = self._parser.get_status_code()
        if 300 <= status < 400:
            raise UpstreamError(
                "the upstream answered with a redirect, which is never followed",
                code="upstream.unexpected_redirect",
            )
        if status < 200 or status in (204, 304):
            self._delimited = True  # no body by definition
        if self._head_method and status >= 200:
            # llhttp cannot be told the request was HEAD: the answer ends here, and
            # the connection is not reused (a body might still follow).
            self._complete(reuse=False)

    def on_body(self, body: bytes) -> None:
        self._progress = self._received
        self._size += len(body)
        if self._size > self._max_body:
            raise _too_large()
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self._complete(reuse=self._parser.should_keep_alive())

    # -- the end of an exchange ---------------------------------------------------------

    def _complete(self, *, reuse: bool = False) -> None:
        future, self._future = self._future, None
        self._disarm()
        if future is None or future.done():
            return
        self._reusable = reuse
        if not reuse:
            self.close()
        future.set_result(
            UpstreamAnswer(
                status=self._parser.get_status_code(),
                content_type=self._content_type,
                body=b"".join(self._chunks),
                retry_after=self._retry_after,
                headers=tuple(self._headers),
            )
        )
        self._chunks = []

    def _fail(self, error: GatewayError, *, stale: bool = False) -> None:
        future, self._future = self._future, None
        self.close()
        if future is not None and not future.done():
            future.set_exception(_Failed(error, stale=stale))


def _bad_http() -> UpstreamError:
    return UpstreamError("the upstream's answer was not valid HTTP", code="upstream.unavailable")


def _too_large() -> UpstreamError:
    return UpstreamError("the upstream answer is too large", code="upstream.response_too_large")


class H1Transport:
    """HTTP/1.1 to the upstreams, over kept-alive connections; limits from ``Limits``.

    One instance serves every upstream of a worker; :meth:`close` closes its
    connections. Concurrency per upstream is bounded by the caller (the proxy's
    connection slots); idle connections are kept up to ``MAX_IDLE`` per origin
    for ``KEEP_IDLE`` seconds.
    """

    def __init__(self, limits: Limits, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._limits = limits
        self._ssl = ssl_context or ssl.create_default_context()
        self._origins: dict[str, Origin] = {}  # by "scheme://authority"
        self._idle: dict[str, deque[_Connection]] = {}  # by the same key
        self._busy: set[_Connection] = set()
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}  # checked header blocks

    async def send(self, request: UpstreamRequest) -> UpstreamAnswer:
        key, origin, target = self._split(request.url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limits.total_timeout
        body = None if request.body is None else await _read_body(request.body)
        data = self._head(request.method, origin, target, request.headers, body)
        head_method = request.method in _NO_BODY_METHODS
        retry = request.method in _RETRYABLE
        while True:
            conn = self._pooled(key, loop.time())
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, deadline)
            self._busy.add(conn)
            try:
                answer = await conn.start(data, head_method, self._limits.read_timeout, deadline)
            except _Failed as failed:
                if reused and retry and failed.stale:
                    retry = False  # a kept-alive connection the upstream had closed
                    continue
                raise failed.error from None
            except BaseException:
                conn.close()  # cancelled mid-exchange: its state is unknown
                raise
            finally:
                self._busy.discard(conn)
            if conn.reusable:
                self._release(key, conn, loop.time())
            return answer

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    # -- pieces -------------------------------------------------------------------------

    def _split(self, url: str) -> tuple[str, Origin, str]:
        """The origin's key (``scheme://authority``), the origin, and the request
        target (path and query, already percent-encoded)."""
        start = url.find("//") + 2
        end = len(url)
        for mark in "/?":  # the authority ends at the path, or at the query if no path
            at = url.find(mark, start)
            if 0 <= at < end:
                end = at
        key, rest = url[:end], url[end:]
        target = rest if rest.startswith("/") else "/" + rest
        origin = self._origins.get(key)
        if origin is None:
            origin = Origin.parse(key)
            if len(self._origins) < 1024:
                self._origins[key] = origin
        if not target.isascii() or _UNSAFE_TARGET.search(target):
            raise UpstreamError(
                "the upstream request target holds a space, a control character or "
                "a character that is not percent-encoded",
                code="upstream.invalid_target",
            )
        return key, origin, target

    def _head(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> bytes:
        """The request's bytes: request line, ``Host``, the header fields, the body."""
        fields = tuple(headers)
        block = self._blocks.get(fields)
        if block is None:
            block = _header_block(fields)
            if len(self._blocks) >= 256:
                self._blocks.clear()
            self._blocks[fields] = block
        line = f"{method} {target} HTTP/1.1\r\nhost: {origin.host_header}\r\n".encode()
        if body is None:
            return line + block + b"\r\n"
        return line + block + b"content-length: %d\r\n\r\n" % len(body) + body

    def _pooled(self, key: str, now: float) -> _Connection | None:
        """The most recently used idle connection to ``key`` that is still open."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEP_IDLE:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        max_body = self._limits.max_response_body
        timeout = min(self._limits.connect_timeout, deadline - loop.time())
        tls = self._ssl if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                _, conn = await loop.create_connection(
                    lambda: _Connection(max_body), origin.host, origin.port, ssl=tls
                )
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except ssl.SSLError:
            raise UpstreamError(
                "the upstream's TLS certificate or handshake was refused", code="upstream.tls_error"
            ) from None
        except OSError:
            raise UpstreamError(
                "the upstream could not be reached", code="upstream.unavailable"
            ) from None
        return conn

    def _release(self, key: str, conn: _Connection, now: float) -> None:
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
        if len(idle) >= MAX_IDLE:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)


async def _read_body(chunks: AsyncIterator[bytes]) -> bytes:
    # Bounded by the caller: the proxy refuses bodies past max_request_body.
    return b"".join([chunk async for chunk in chunks])


def _header_block(fields: tuple[tuple[str, str], ...]) -> bytes:
    """The caller-independent part of the header: checked once per distinct set."""
    lines: list[str] = []
    agent = accept = False
    for name, value in fields:
        lower = name.lower()
        if lower in ("host", "content-length", "transfer-encoding", "connection"):
            continue  # framing and routing are this client's, never the caller's
        if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
            raise _invalid_header()
        agent = agent or lower == "user-agent"
        accept = accept or lower == "accept"
        lines.append(f"{name}: {value}\r\n")
    if not agent:
        lines.append(f"user-agent: {USER_AGENT}\r\n")
    if not accept:
        lines.append("accept: */*\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise _invalid_header() from None


def _invalid_header() -> UpstreamError:
    return UpstreamError(
        "a header for the upstream holds characters HTTP does not allow",
        code="upstream.invalid_header",
    )
