"""H1Transport against real servers on loopback that answer with crafted bytes.

Each test holds one promise of ``gateway/h1.py``'s docstring (or of
``gateway/transport.py``'s, which every transport keeps). The upstream is a raw
asyncio TCP server: it records the exact bytes of every request on every
connection it accepted and answers whatever the test scripts, so malformed and
hostile answers can be sent. Every test runs on asyncio's own loop and on uvloop,
which production runs on (uvloop's transports are not ``asyncio.Transport``
subclasses).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from gateway import __version__, h1
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.h1 import H1Transport
from gateway.settings import Limits
from gateway.transport import UpstreamRequest
from gateway.upstreams.base import UpstreamAnswer
from tests.support.tls import self_signed

Runner = Callable[[Coroutine[Any, Any, None]], None]

# Short enough that a hang fails a test in seconds, long enough never to fire by accident.
LIMITS = Limits(connect_timeout=2.0, read_timeout=2.0, total_timeout=3.0)
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
WAIT = 2.0  # seconds to wait for something the test upstream should see at once
# For plain-http tests: loading the system's trust store (what H1Transport does without
# a context) takes 50 ms a client. This context trusts nothing, should it ever be used.
NO_TRUST = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)\r\n", re.IGNORECASE)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a test's coroutine on a fresh event loop of either kind."""
    runner: Runner = uvloop.run if request.param == "uvloop" else asyncio.run
    return runner


# -- the test upstream --------------------------------------------------------------------


class Peer:
    """One connection the test upstream accepted: the requests read on it, its end."""

    def __init__(
        self,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        requested: asyncio.Event,
    ) -> None:
        self.index = index
        self.reader, self.writer = reader, writer
        self.requests: list[bytes] = []
        self.ended = asyncio.Event()  # the client closed the connection
        self._requested = requested

    async def request(self) -> bytes | None:
        """The next request's bytes (head and Content-Length body), or None at its end."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(head)
            body = await self.reader.readexactly(int(length[1])) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended.set()
            return None
        self.requests.append(head + body)
        self._requested.set()
        return head + body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def hold(self) -> None:
        """Answer nothing more (recording what still comes) until the client closes."""
        while await self.request() is not None:
            pass


Serve = Callable[[Peer], Awaitable[None]]


def answering(*answers: bytes) -> Serve:
    """Answers the requests on each connection with ``answers`` in turn, the last one
    repeating, and keeps the connection open until the client closes it."""

    async def serve(peer: Peer) -> None:
        n = 0
        while await peer.request() is not None:
            await peer.send(answers[min(n, len(answers) - 1)])
            n += 1

    return serve


def sending(*parts: bytes) -> Serve:
    """Answers every request on each connection with ``parts``, one write each."""

    async def serve(peer: Peer) -> None:
        while await peer.request() is not None:
            for part in parts:
                await peer.send(part)

    return serve


def first_then_ok(first: Serve) -> Serve:
    """``first`` serves the first connection; every later one is answered ``OK``."""
    later = answering(OK)

    async def serve(peer: Peer) -> None:
        await (first if peer.index == 0 else later)(peer)

    return serve


class Upstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1: each accepted connection is a :class:`Peer`
    handed to ``serve``; ``peers`` keeps them in the order they were accepted."""

    def __init__(self, serve: Serve, *, tls: ssl.SSLContext | None = None) -> None:
        self._serve = serve
        self._tls = tls
        self.peers: list[Peer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[Exception] = []
        self.port = 0
        self.origin = ""
        self.requested = asyncio.Event()  # a request was read, on any connection

    @property
    def requests(self) -> list[bytes]:
        return [request for peer in self.peers for request in peer.requests]

    def url(self, target: str = "/") -> str:
        return self.origin + target

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.origin = f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if self._errors:
            raise self._errors[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer, self.requested)
        self.peers.append(peer)
        try:
            await self._serve(peer)
        except ConnectionError:
            peer.ended.set()  # the client went away while the upstream was writing
        except asyncio.CancelledError:
            pass  # the test is over
        except Exception as exc:  # noqa: BLE001 - a broken test upstream fails the test
            self._errors.append(exc)
        finally:
            writer.close()


# -- the client side ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client(
    limits: Limits = LIMITS, *, ssl_context: ssl.SSLContext | None = NO_TRUST
) -> AsyncIterator[H1Transport]:
    """An H1Transport, closed at the end; ``ssl_context=None`` for its own default one."""
    transport = H1Transport(limits, ssl_context=ssl_context)
    try:
        yield transport
    finally:
        await transport.close()


def limits(**changes: Any) -> Limits:
    return msgspec.structs.replace(LIMITS, **changes)


async def get(
    transport: H1Transport,
    url: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
) -> UpstreamAnswer:
    async def chunks() -> AsyncIterator[bytes]:
        assert body is not None
        yield body[:3]
        yield body[3:]

    return await transport.send(
        UpstreamRequest(method, url, headers or [], chunks() if body is not None else None)
    )


async def failure(call: Awaitable[UpstreamAnswer]) -> tuple[GatewayError, float]:
    """The UpstreamError or UpstreamTimeout ``call`` raises, and how long it took."""
    started = time.monotonic()
    with pytest.raises((UpstreamError, UpstreamTimeout)) as caught:
        await call
    return caught.value, time.monotonic() - started


async def ended(peer: Peer) -> None:
    """Returns once the client has closed ``peer``'s connection; fails after WAIT s."""
    await asyncio.wait_for(peer.ended.wait(), WAIT)


# -- keep-alive and the request's bytes ---------------------------------------------------


def test_a_kept_alive_connection_is_reused_for_every_call(run: Runner) -> None:
    async def main() -> None:
        async with Upstream(answering(OK)) as up, client() as transport:
            for _ in range(20):
                answer = await get(transport, up.url("/v2/ping"))
                assert (answer.status, answer.body) == (200, b"ok")
        assert len(up.peers) == 1
        assert len(up.requests) == 20

    run(main())


def test_the_request_has_host_the_target_as_given_and_no_framing_from_the_caller(
    run: Runner,
) -> None:
    """Host is the upstream's, the target is sent byte for byte (never re-encoded),
    score-gateway's user agent is added unless the caller named one, and the caller's
    Host, Connection, Transfer-Encoding and Content-Length are dropped."""
    target = "/v2/user.json/5001/score?key=a%2Fb%20c&q=%7E%C3%A9&empty=&flag"
    caller = [
        ("Accept", "application/json"),
        ("Host", "evil.example"),
        ("Connection", "close"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "99"),
        ("X-Trace", "t-1"),
    ]

    async def main() -> None:
        async with Upstream(answering(OK)) as up, client() as transport:
            await get(transport, up.url(target), caller)
            await get(transport, up.url("/agent"), [("User-Agent", "Klout/1.0")])
            await get(transport, up.url("/post"), caller, method="POST", body=b'{"a":1}')
            host = f"host: 127.0.0.1:{up.port}\r\n".encode()
        agent = f"user-agent: score-gateway/{__version__}\r\n".encode()
        assert up.requests == [
            b"GET " + target.encode() + b" HTTP/1.1\r\n" + host + b"Accept: application/json\r\n"
            b"X-Trace: t-1\r\n" + agent + b"\r\n",
            b"GET /agent HTTP/1.1\r\n" + host + b"User-Agent: Klout/1.0\r\naccept: */*\r\n\r\n",
            b"POST /post HTTP/1.1\r\n"
            + host
            + b"Accept: application/json\r\nX-Trace: t-1\r\n"
            + agent
            + b'content-length: 7\r\n\r\n{"a":1}',
        ]
        assert len(up.peers) == 1  # the caller's "Connection: close" changed nothing

    run(main())


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", 2),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 2\r\n\r\nok", 2),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 2),
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", 1),
    ],
    ids=["close", "close-capitalised", "http1.0", "http1.0-keep-alive"],
)
def test_a_connection_the_upstream_will_close_is_not_reused(
    run: Runner, answer: bytes, connections: int
) -> None:
    """The upstream keeps the connection open and would answer again on it: only the
    client's reading of ``Connection`` and the HTTP version decides."""

    async def main() -> None:
        async with Upstream(answering(answer)) as up, client() as transport:
            for _ in range(2):
                assert (await get(transport, up.url())).body == b"ok"
            if connections == 2:
                await ended(up.peers[0])
        assert len(up.peers) == connections
        assert len(up.requests) == 2

    run(main())


def test_an_idle_connection_past_keep_idle_is_closed_not_reused(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1, "KEEP_IDLE", 0.0)

    async def main() -> None:
        async with Upstream(answering(OK)) as up, client() as transport:
            await get(transport, up.url())
            await get(transport, up.url())
            await ended(up.peers[0])
        assert len(up.peers) == 2

    run(main())


# -- bodies --------------------------------------------------------------------------------


def test_a_chunked_body_is_decoded_and_the_connection_reused(run: Runner) -> None:
    parts = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n6;ext=1\r\n world\r\n",
        b"9\r\n and more\r\n0\r\nx-trailer: t\r\n\r\n",
    ]

    async def main() -> None:
        async with Upstream(sending(*parts)) as up, client() as transport:
            for _ in range(2):
                answer = await get(transport, up.url())
                assert (answer.status, answer.body) == (200, b"hello world and more")
        assert len(up.peers) == 1

    run(main())


def test_a_body_without_a_length_is_read_until_the_connection_closes(run: Runner) -> None:
    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst part, ")
        await peer.send(b"second part")
        peer.writer.close()

    async def main() -> None:
        async with Upstream(serve) as up, client() as transport:
            answer = await get(transport, up.url())
        assert (answer.status, answer.body) == (200, b"first part, second part")

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n12345\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n12345\r\n0\r\n",
    ],
    ids=["content-length", "chunked", "chunked-no-final-crlf"],
)
def test_a_body_cut_short_by_the_connection_closing_is_an_error_not_a_short_answer(
    run: Runner, answer: bytes
) -> None:
    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)

    async def main() -> None:
        async with Upstream(serve) as up, client() as transport:
            error, _ = await failure(get(transport, up.url()))
        assert error.code == "upstream.unavailable"
        assert len(up.peers) == 1  # a GET with part of an answer is never retried

    run(main())


LIMIT = 64 * 1024


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % LIMIT,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ],
    ids=["content-length", "chunked", "until-close"],
)
def test_a_body_of_exactly_the_limit_is_accepted(run: Runner, head: bytes) -> None:
    body = bytes(range(256)) * (LIMIT // 256)
    chunked = b"transfer-encoding" in head
    answer = head + (b"%x\r\n%s\r\n0\r\n\r\n" % (LIMIT, body) if chunked else body)

    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        if b"content-length" in head or chunked:
            await peer.hold()  # else the connection's end is the body's

    async def main() -> None:
        async with Upstream(serve) as up, client(limits(max_response_body=LIMIT)) as transport:
            assert (await get(transport, up.url())).body == body

    run(main())


def test_a_declared_length_over_the_limit_is_refused_before_the_body_arrives(
    run: Runner,
) -> None:
    """The upstream sends the head and then nothing: the refusal cannot wait for a body."""

    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (LIMIT + 1))
        await peer.hold()

    async def main() -> None:
        slow = limits(max_response_body=LIMIT, read_timeout=5.0, total_timeout=6.0)
        async with Upstream(serve) as up, client(slow) as transport:
            error, took = await failure(get(transport, up.url()))
            await ended(up.peers[0])
        assert error.code == "upstream.response_too_large"
        assert took < 1.0

    run(main())


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"4000\r\n%s\r\n" % (b"x" * 0x4000),
        ),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * 2000),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"x" * 0x4000),
    ],
    ids=["chunked", "tiny-chunks", "until-close"],
)
def test_an_endless_body_is_cut_off_at_the_limit(run: Runner, head: bytes, piece: bytes) -> None:
    """The upstream writes for as long as the connection stays open."""

    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(head)
        while True:
            await peer.send(piece)

    async def main() -> None:
        slow = limits(max_response_body=LIMIT, read_timeout=5.0, total_timeout=6.0)
        async with Upstream(serve) as up, client(slow) as transport:
            error, took = await failure(get(transport, up.url()))
            await ended(up.peers[0])
        assert error.code == "upstream.response_too_large"
        assert took < 1.5

    run(main())


# -- what is never followed, never accepted -------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_its_location_never_requested(run: Runner, status: int) -> None:
    moved = b"HTTP/1.1 %d Moved\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n" % status

    async def main() -> None:
        async with Upstream(answering(moved, OK)) as up, client() as transport:
            error, _ = await failure(get(transport, up.url("/here")))
            await ended(up.peers[0])
        assert error.code == "upstream.unexpected_redirect"
        assert len(up.peers) == 1
        assert [r.split(b" ")[1] for r in up.requests] == [b"/here"]

    run(main())


_FIELDS = b"".join(b"x-f%d: %d\r\n" % (i, i) for i in range(200))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * 100 * 1024 + b"\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n" + _FIELDS + b"content-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 " + b"O" * 100 * 1024 + b"\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * 100 * 1024,
        b"HTTP/1.1 200 OK\r\n"
        + b"x-filler: 0123456789012345678901234567890123456789\r\n" * 100
        + b"x-big: "
        + b"v" * 60 * 1024
        + b"\r\ncontent-length: 2\r\n\r\nok",
    ],
    ids=["one-100-KiB-value", "200-fields", "100-KiB-status-line", "unterminated", "many-and-big"],
)
def test_a_head_past_64_kib_or_128_fields_is_refused_never_a_hang(
    run: Runner, answer: bytes
) -> None:
    """Written in one piece: whether the client reads it in one go or several, the head
    is refused, and at once (the upstream then waits, which a hang would meet)."""

    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.hold()

    async def main() -> None:
        slow = limits(read_timeout=5.0, total_timeout=6.0)
        async with Upstream(serve) as up, client(slow) as transport:
            error, took = await failure(get(transport, up.url()))
            await ended(up.peers[0])
        assert not isinstance(error, UpstreamTimeout)
        assert error.code == "upstream.unavailable"
        assert took < 1.5

    run(main())


@pytest.mark.parametrize(
    "start",
    [b"0\r\nx-trailer: ", b"0\r\nx-trailer", b"2;ext=", b"0"],
    ids=["trailer-value", "trailer-name", "chunk-extension", "chunk-size-zeros"],
)
def test_endless_framing_after_the_head_is_cut_off_never_buffered(
    run: Runner, start: bytes
) -> None:
    """A chunked body's trailer field or chunk-size line that never ends: no body byte
    comes, so the body limit never trips; the 64 KiB bound of the head covers them."""
    filler = start[-1:] * 0x4000 if start[-1:] == b"0" else b"a" * 0x4000

    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n" + start)
        while True:
            await peer.send(filler)

    async def main() -> None:
        slow = limits(read_timeout=3.0, total_timeout=3.0)
        async with Upstream(serve) as up, client(slow) as transport:
            error, took = await failure(get(transport, up.url()))
            await ended(up.peers[0])
        assert error.code == "upstream.unavailable"
        assert took < 1.5

    run(main())


@pytest.mark.parametrize(
    ("fields", "kept"),
    [
        (b"".join(b"x-f%d: %d\r\n" % (i, i) for i in range(127)), 127),
        (b"x-big: " + b"v" * 63 * 1024 + b"\r\n", 1),
    ],
    ids=["128-fields", "63-KiB-value"],
)
def test_a_head_within_64_kib_and_128_fields_is_accepted(
    run: Runner, fields: bytes, kept: int
) -> None:
    """The bounds are the documented ones, not tighter."""
    answer = b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: 2\r\n\r\nok"

    async def main() -> None:
        async with Upstream(answering(answer)) as up, client() as transport:
            got = await get(transport, up.url())
        assert (got.body, len(got.headers)) == (b"ok", kept)

    run(main())


MALFORMED = {
    "garbage-status-line": b"garbage\r\n\r\n",
    "status-not-a-number": b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok",
    "conflicting-content-lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
    "content-length-and-chunked": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "negative-content-length": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nok",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
    "bare-lf-in-header": b"HTTP/1.1 200 OK\r\nx-a: 1\ncontent-length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
    "space-in-header-name": b"HTTP/1.1 200 OK\r\nx a: 1\r\ncontent-length: 2\r\n\r\nok",
    "upgrade": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
}


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_answer_is_an_error_and_its_connection_never_reused(
    run: Runner, answer: bytes
) -> None:
    """The upstream keeps the connection open after the bad answer: only the client
    closes it, and the next call opens a new one."""

    async def bad(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.hold()

    async def main() -> None:
        async with Upstream(first_then_ok(bad)) as up, client() as transport:
            error, took = await failure(get(transport, up.url()))
            await ended(up.peers[0])
            assert (await get(transport, up.url())).body == b"ok"
        assert error.code == "upstream.unavailable"
        assert took < 1.0
        assert len(up.peers) == 2
        assert len(up.peers[0].requests) == 1

    run(main())


# -- time ----------------------------------------------------------------------------------


def test_an_upstream_that_never_answers_times_out_at_the_read_timeout(run: Runner) -> None:
    async def main() -> None:
        async with Upstream(Peer.hold) as up, client(limits(read_timeout=0.3)) as transport:
            error, took = await failure(get(transport, up.url()))
            await ended(up.peers[0])
        assert isinstance(error, UpstreamTimeout)
        assert error.code == "upstream.timeout"
        assert 0.25 <= took < 1.5

    run(main())


def test_an_upstream_that_stalls_mid_body_times_out_at_the_read_timeout(run: Runner) -> None:
    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
        await peer.hold()

    async def main() -> None:
        async with Upstream(serve) as up, client(limits(read_timeout=0.3)) as transport:
            error, took = await failure(get(transport, up.url()))
            await ended(up.peers[0])
        assert isinstance(error, UpstreamTimeout)
        assert 0.25 <= took < 1.5

    run(main())


def test_a_slow_drip_is_cut_off_at_the_total_timeout(run: Runner) -> None:
    """One byte every 0.1 s never trips a 0.3 s read timeout; the 0.6 s total does."""

    async def serve(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):
            await asyncio.sleep(0.1)
            await peer.send(b"x")

    async def main() -> None:
        drip = limits(read_timeout=0.3, total_timeout=0.6)
        async with Upstream(serve) as up, client(drip) as transport:
            error, took = await failure(get(transport, up.url()))
        assert isinstance(error, UpstreamTimeout)
        assert 0.55 <= took < 1.5

    run(main())


def _drip_from_a_thread(listener: socket.socket, stop: threading.Event) -> None:
    """An upstream outside the event loop, as a real one is: it answers the head of
    a 1000-byte body, then one byte every 5 ms for 3 s at most."""
    connection, _ = listener.accept()
    with connection, contextlib.suppress(OSError):  # the client closes when it gives up
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(600):
            if stop.wait(0.005):
                return
            connection.sendall(b"x")


def test_the_total_timeout_holds_on_a_busy_loop_with_data_every_turn(run: Runner) -> None:
    """Each turn of the loop takes 20 ms (a busy worker) and a byte arrives every 5 ms,
    so when the deadline is due there is data to read in the same turn: reading it
    must not push the deadline back (asyncio's loop runs I/O callbacks before timers)."""

    async def busy() -> None:
        while True:
            time.sleep(0.02)  # noqa: ASYNC251 - the point: a loop turn takes 20 ms
            await asyncio.sleep(0)

    async def main() -> None:
        stop = threading.Event()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            upstream = threading.Thread(target=_drip_from_a_thread, args=(listener, stop))
            upstream.start()
            try:
                drip = limits(read_timeout=0.3, total_timeout=0.6)
                async with client(drip) as transport:
                    worker = asyncio.create_task(busy())
                    try:
                        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
                        error, took = await failure(get(transport, url))
                    finally:
                        worker.cancel()
            finally:
                stop.set()
                upstream.join()
        assert isinstance(error, UpstreamTimeout)
        assert 0.55 <= took < 1.5

    run(main())


@contextlib.contextmanager
def _unaccepted_port() -> Iterator[int]:
    """A port whose accept queue is full: a new connection's SYN is dropped and the
    connect hangs (Linux drops SYNs to a listener with a full accept queue)."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(3):  # the first fills the queue; the last probes that the next hang
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        _, connected, _ = select.select([], [filler], [], 0.1)
        if connected:
            pytest.skip("this kernel does not drop SYNs to a listener with a full queue")
        yield port


def test_a_connect_that_hangs_times_out_at_the_connect_timeout(run: Runner) -> None:
    async def main() -> None:
        with _unaccepted_port() as port:
            async with client(limits(connect_timeout=0.3)) as transport:
                error, took = await failure(get(transport, f"http://127.0.0.1:{port}/"))
        assert isinstance(error, UpstreamTimeout)
        assert 0.25 <= took < 1.5

    run(main())


def test_nothing_listening_is_unavailable_at_once(run: Runner) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free again once closed: nothing listens there

    async def main() -> None:
        async with client() as transport:
            error, took = await failure(get(transport, f"http://127.0.0.1:{port}/"))
        assert error.code == "upstream.unavailable"
        assert not isinstance(error, UpstreamTimeout)
        assert took < 0.5

    run(main())


# -- a kept-alive connection the upstream closed -------------------------------------------


def _closes_on_second_request(partial: bytes = b"") -> Serve:
    """The first connection answers one request, then, when the next request arrives,
    closes without answering (after ``partial``): the race of a keep-alive upstream
    closing an idle connection just as the client reuses it."""

    async def first(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        if partial:
            await peer.send(partial)

    return first_then_ok(first)


def test_a_get_on_a_connection_the_upstream_closed_while_idle_is_retried_once(
    run: Runner,
) -> None:
    async def main() -> None:
        async with Upstream(_closes_on_second_request()) as up, client() as transport:
            assert (await get(transport, up.url("/one"))).body == b"ok"
            assert (await get(transport, up.url("/two"))).body == b"ok"
        assert len(up.peers) == 2
        assert [len(peer.requests) for peer in up.peers] == [2, 1]
        assert up.peers[0].requests[1] == up.peers[1].requests[0]  # the same GET, sent again

    run(main())


def test_a_head_on_a_connection_the_upstream_closed_while_idle_is_retried_once(
    run: Runner,
) -> None:
    async def main() -> None:
        async with Upstream(_closes_on_second_request()) as up, client() as transport:
            assert (await get(transport, up.url("/one"))).body == b"ok"
            assert (await get(transport, up.url("/two"), method="HEAD")).status == 200
        assert len(up.peers) == 2

    run(main())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_non_idempotent_call_on_a_connection_the_upstream_closed_is_never_retried(
    run: Runner, method: str
) -> None:
    async def main() -> None:
        async with Upstream(_closes_on_second_request()) as up, client() as transport:
            assert (await get(transport, up.url("/one"))).body == b"ok"
            error, _ = await failure(get(transport, up.url("/two"), method=method, body=b"{}"))
        assert error.code == "upstream.unavailable"
        assert len(up.peers) == 1

    run(main())


def test_a_get_that_got_part_of_an_answer_before_the_close_is_never_retried(run: Runner) -> None:
    async def main() -> None:
        closes = _closes_on_second_request(partial=b"HTTP/1.1 200 OK\r\n")
        async with Upstream(closes) as up, client() as transport:
            assert (await get(transport, up.url("/one"))).body == b"ok"
            error, _ = await failure(get(transport, up.url("/two")))
        assert error.code == "upstream.unavailable"
        assert len(up.peers) == 1

    run(main())


def test_a_get_on_a_fresh_connection_closed_without_an_answer_is_never_retried(
    run: Runner,
) -> None:
    async def closes(peer: Peer) -> None:
        await peer.request()

    async def main() -> None:
        async with Upstream(first_then_ok(closes)) as up, client() as transport:
            error, _ = await failure(get(transport, up.url()))
        assert error.code == "upstream.unavailable"
        assert len(up.peers) == 1
        assert len(up.requests) == 1

    run(main())


def test_a_stale_get_is_retried_only_once(run: Runner) -> None:
    """Every connection answers one request and closes on the next: the GET on the
    reused connection is retried on a fresh one, whose failure is final."""

    async def serve(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(OK)
        await peer.request()

    async def main() -> None:
        async with Upstream(serve) as up, client() as transport:
            await get(transport, up.url("/one"))
            error, _ = await failure(get(transport, up.url("/two")))
        assert error.code == "upstream.unavailable"
        assert len(up.peers) == 2

    run(main())


# -- nothing injected ----------------------------------------------------------------------

BAD_HEADERS = {
    "crlf-in-value": ("X-A", "a\r\nX-Injected: 1"),
    "lf-in-value": ("X-A", "a\nX-Injected: 1"),
    "cr-in-value": ("X-A", "a\rb"),
    "nul-in-value": ("X-A", "a\x00b"),
    "space-in-name": ("X A", "1"),
    "colon-in-name": ("X-A:", "1"),
    "crlf-in-name": ("X-A\r\nX-Injected", "1"),
    "empty-name": ("", "1"),
    "non-ascii-name": ("X-É", "1"),
    "value-beyond-latin-1": ("X-A", "€"),
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_a_header_that_could_inject_is_refused_before_a_byte_is_sent(
    run: Runner, header: tuple[str, str]
) -> None:
    async def main() -> None:
        async with Upstream(answering(OK)) as up, client() as transport:
            error, _ = await failure(get(transport, up.url("/bad"), [("Accept", "*/*"), header]))
            assert (await get(transport, up.url("/good"))).body == b"ok"
        assert error.code == "upstream.invalid_header"
        assert [r.split(b" ")[1] for r in up.requests] == [b"/good"]
        assert len(up.peers) == 1

    run(main())


@pytest.mark.parametrize(
    "target", ["/a b", "/a\r\nX-Injected: 1", "/a\tb", "/a\x00", "/a#frag", "/é"]
)
def test_a_target_that_could_inject_is_refused_before_a_byte_is_sent(
    run: Runner, target: str
) -> None:
    async def main() -> None:
        async with Upstream(answering(OK)) as up, client() as transport:
            error, _ = await failure(get(transport, up.url(target)))
        assert error.code == "upstream.invalid_target"
        assert up.peers == []

    run(main())


# -- what closes a connection --------------------------------------------------------------


def test_a_cancelled_call_closes_its_connection_and_the_next_call_opens_another(
    run: Runner,
) -> None:
    async def main() -> None:
        async with Upstream(first_then_ok(Peer.hold)) as up, client() as transport:
            call = asyncio.create_task(get(transport, up.url()))
            await asyncio.wait_for(up.requested.wait(), WAIT)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await ended(up.peers[0])
            assert (await get(transport, up.url())).body == b"ok"
        assert len(up.peers) == 2

    run(main())


@pytest.mark.parametrize(
    "unsolicited",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL",
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nEV",
        b"garbage",
    ],
    ids=["an-answer", "part-of-an-answer", "garbage"],
)
@pytest.mark.parametrize("when", ["later", "with-the-answer"])
def test_bytes_nobody_asked_for_close_the_connection(
    run: Runner, unsolicited: bytes, when: str
) -> None:
    """The upstream sends bytes after its answer, in the same write or once the
    connection is idle; it would answer a next request on the same connection."""

    async def first(peer: Peer) -> None:
        await peer.request()
        if when == "later":
            await peer.send(OK)
            await asyncio.sleep(0.05)  # the answer is read before these arrive
            await peer.send(unsolicited)
        else:
            await peer.send(OK + unsolicited)
        await answering(OK)(peer)

    async def main() -> None:
        async with Upstream(first_then_ok(first)) as up, client() as transport:
            assert (await get(transport, up.url())).body == b"ok"
            await ended(up.peers[0])
            assert (await get(transport, up.url())).body == b"ok"
        assert len(up.peers) == 2

    run(main())


# -- interim answers and HEAD ----------------------------------------------------------------


def test_interim_answers_are_skipped_for_the_final_one(run: Runner) -> None:
    """Their headers are not the final answer's; the connection is then reused."""
    parts = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nx-early: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-final: 1\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nfinal",
    ]

    async def main() -> None:
        async with Upstream(sending(*parts)) as up, client() as transport:
            for _ in range(2):
                answer = await get(transport, up.url())
                assert (answer.status, answer.body) == (200, b"final")
                assert answer.headers == (("x-final", "1"),)
        assert len(up.peers) == 1

    run(main())


def test_a_head_answer_ends_with_its_header_whatever_its_content_length(run: Runner) -> None:
    """The upstream sends ``Content-Length: 5`` and no body, and keeps the connection open;
    the connection is not reused (a body might still follow)."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nx-n: 1\r\n\r\n"

    async def main() -> None:
        slow = limits(read_timeout=5.0, total_timeout=6.0)
        async with Upstream(answering(head)) as up, client(slow) as transport:
            started = time.monotonic()
            answer = await get(transport, up.url(), method="HEAD")
            took = time.monotonic() - started
            await ended(up.peers[0])
            assert (await get(transport, up.url(), method="HEAD")).status == 200
        assert (answer.status, answer.body, answer.content_type) == (200, b"", "text/plain")
        assert answer.headers == (("x-n", "1"),)
        assert took < 1.0
        assert up.requests[0].startswith(b"HEAD / HTTP/1.1\r\n")
        assert len(up.peers) == 2

    run(main())


@pytest.mark.parametrize(("method", "status"), [("HEAD", b"200 OK"), ("GET", b"204 No Content")])
def test_an_answer_without_a_body_may_declare_any_length(
    run: Runner, method: str, status: bytes
) -> None:
    """A HEAD or 204 answer's Content-Length describes a body that is not sent: one past
    ``max_response_body`` is not "too large"."""
    head = b"HTTP/1.1 " + status + b"\r\ncontent-length: 99999999\r\n\r\n"

    async def main() -> None:
        async with Upstream(answering(head)) as up, client(limits()) as transport:
            answer = await get(transport, up.url(), method=method)
        assert (answer.status, answer.body) == (int(status[:3]), b"")

    run(main())


def test_a_query_without_a_path_keeps_its_query(run: Runner) -> None:
    """``http://host:port?key=...``: the target is ``/?key=...``, never ``/`` without it
    (the query may carry the upstream's credential)."""

    async def main() -> None:
        async with Upstream(answering(OK)) as up, client(limits()) as transport:
            await get(transport, up.origin + "?key=k%20v&x=1")
        assert up.requests[0].startswith(b"GET /?key=k%20v&x=1 HTTP/1.1\r\n")

    run(main())


# -- what is kept of an answer -------------------------------------------------------------


def test_only_x_headers_and_retry_after_are_kept_lower_cased(run: Runner) -> None:
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\n"
        b"Content-Type: application/json; charset=utf-8\r\n"
        b"X-Request-Id: r-1\r\n"
        b"Set-Cookie: session=1\r\n"
        b"Server: vendor/1.0\r\n"
        b"Retry-After: 120\r\n"
        b"X-RateLimit-Remaining: 0\r\n"
        b"Link: <https://vendor.example/>\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )

    async def main() -> None:
        async with Upstream(answering(answer)) as up, client() as transport:
            got = await get(transport, up.url())
        assert got == UpstreamAnswer(
            status=429,
            content_type="application/json; charset=utf-8",
            body=b"{}",
            retry_after="120",
            headers=(
                ("x-request-id", "r-1"),
                ("retry-after", "120"),
                ("x-ratelimit-remaining", "0"),
            ),
        )

    run(main())


# -- no ambient configuration --------------------------------------------------------------


def test_no_proxy_is_taken_from_the_environment(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        proxied = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nproxied"
        async with Upstream(answering(proxied)) as proxy, Upstream(answering(OK)) as up:
            for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
                monkeypatch.setenv(name, proxy.origin)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            async with client() as transport:
                assert (await get(transport, up.url())).body == b"ok"
        assert proxy.peers == []

    run(main())


def test_cookies_are_never_sent_back_and_bodies_never_decompressed(run: Runner) -> None:
    compressed = gzip.compress(b"hello")
    answer = (
        b"HTTP/1.1 200 OK\r\nset-cookie: session=1; Path=/\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(compressed), compressed)
    )

    async def main() -> None:
        async with Upstream(answering(answer)) as up, client() as transport:
            for _ in range(2):
                assert (await get(transport, up.url())).body == compressed
        for request in up.requests:
            assert b"\r\ncookie:" not in request.lower()
            assert b"accept-encoding" not in request.lower()

    run(main())


# -- TLS -----------------------------------------------------------------------------------


def _server_tls(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def test_a_self_signed_certificate_is_refused(run: Runner, tmp_path: Path) -> None:
    tls = _server_tls(*self_signed(tmp_path))

    async def main() -> None:
        async with Upstream(answering(OK), tls=tls) as up, client(ssl_context=None) as transport:
            error, took = await failure(get(transport, up.url()))
        assert error.code == "upstream.tls_error"
        assert up.requests == []
        assert took < 1.5

    run(main())


def test_a_trusted_certificate_for_another_address_is_refused(run: Runner, tmp_path: Path) -> None:
    """The host name (here the IP address) is verified, not only the signature."""
    certfile, keyfile = self_signed(tmp_path, address="127.0.0.2")

    async def main() -> None:
        trusting = ssl.create_default_context(cafile=certfile)
        async with (
            Upstream(answering(OK), tls=_server_tls(certfile, keyfile)) as up,
            client(ssl_context=trusting) as transport,
        ):
            error, _ = await failure(get(transport, up.url()))
        assert error.code == "upstream.tls_error"
        assert up.requests == []

    run(main())


def test_a_trusted_certificate_carries_calls_over_https(run: Runner, tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)

    async def main() -> None:
        trusting = ssl.create_default_context(cafile=certfile)
        async with (
            Upstream(answering(OK), tls=_server_tls(certfile, keyfile)) as up,
            client(ssl_context=trusting) as transport,
        ):
            for _ in range(3):
                assert (await get(transport, up.url("/tls?x=1"))).body == b"ok"
        assert len(up.peers) == 1
        assert up.requests[0].startswith(b"GET /tls?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")

    run(main())


def test_ssl_cert_file_is_honoured_by_the_default_context(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certfile, keyfile = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certfile))

    async def main() -> None:
        async with (
            Upstream(answering(OK), tls=_server_tls(certfile, keyfile)) as up,
            client(ssl_context=None) as transport,
        ):
            assert (await get(transport, up.url())).body == b"ok"

    run(main())
