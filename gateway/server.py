"""How the gateway is served: uvicorn with httptools, plus the limits uvicorn lacks.

uvicorn times out idle keep-alive connections but not a client that stops half
way through its headers or body, and it sets no limit on the number or size of
header fields. :class:`GuardedHttpToolsProtocol` adds both at the connection, so
they hold for proxied lookups and admin routes alike, before any application code
runs (reliability.md catalogue 1 #25 and #29; nginx ``client_header_timeout``,
``large_client_header_buffers``; Envoy ``request_headers_timeout``).

Connections are limited per source as well as in total. uvicorn's own
``limit_concurrency`` answered every request, ``/healthz`` included, with a
plain-text 503 once 2,048 connections were open, so one source holding silent
connections took the service and its health checks down. Here a source past
``max_connections_per_source`` gets a problem+json 503 ``connection.limited`` on
each new connection; past ``max_connections`` in total, requests get 503
``gateway.overloaded``, except ``/healthz`` and ``/readyz``, which are always
answered. Both answers carry a request id, recorded in the refusal aggregates
(:mod:`gateway.refusals`) when the gateway app is what is served.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError, render_problem
from gateway.requestid import RequestIds
from gateway.settings import Limits

if TYPE_CHECKING:
    from gateway.settings import Settings

# Callers are enterprise systems on a company network sending small requests: a few
# seconds is generous, and short deadlines keep stalled sockets from piling up.
HEADER_TIMEOUT = 5.0  # seconds from connection or request start to the end of headers
BODY_TIMEOUT = 5.0  # seconds from the end of headers to the end of the body
MAX_HEADER_FIELDS = 100  # Envoy's default
MAX_HEADER_BYTES = 32 * 1024  # nginx: 4 buffers of 8k
MAX_TARGET_BYTES = 16 * 1024  # the request target; the proxy's own limit is lower
LINGER = 1.0  # seconds a refused connection stays half-open so its answer is read


#: An answer the protocol writes itself: status, stable code, human detail.
Answer = tuple[int, str, str]

TIMEOUT_408: Answer = (408, "request.timeout", "the request was not sent in time")
URI_414: Answer = (414, "request.uri_too_long", "the request target is too long")
FIELDS_431: Answer = (
    431,
    "request.header_too_large",
    "too many header fields, or too many bytes of them",
)
MALFORMED_400: Answer = (400, "request.malformed", "the request is not valid HTTP/1.1")
SOURCE_LIMITED: Answer = (
    503,
    "connection.limited",
    "this address holds too many connections to the gateway",
)
OVERLOADED: Answer = (503, "gateway.overloaded", "the gateway holds too many connections; retry")
HEALTH_PATHS = (b"/healthz", b"/readyz")
LINGERING = "\0lingering"  # in the per-source counts: refused connections not yet closed


def _response(answer: Answer, request_id: str) -> bytes:
    """A complete problem+json answer written straight to the socket, then closed.

    These refusals come before the app sees a request; their body is rendered by the
    one problem renderer every other answer uses, with a request id of the gateway's.
    """
    status, code, detail = answer
    headers = {"Retry-After": "1"} if status == 503 else None
    error = GatewayError(detail, code=code, status=status, headers=headers)
    status, fields, body = render_problem(error, request_id)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    head += [name + b": " + value for name, value in fields]
    head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol with header/body read deadlines, header limits, and
    connection limits per source and in total.

    The connection limits and the write deadline are the served gateway's
    ``Settings.limits`` (uvicorn hands each protocol the app it serves; a class
    made per setting could not be pickled for worker processes); any other app
    gets the defaults.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._fields = 0
        self._header_bytes = 0
        self._refused = False
        self._source: str | None = None
        self._lingering = False
        self._write_deadline: asyncio.TimerHandle | None = None
        self._limits = _limits_of(self.app)

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, seconds: float, reason: Answer | None) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, answer: Answer | None) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if answer is not None and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(self._problem(answer))
        # A body that stops arriving: closing makes the app's receive() say disconnect.
        self._refused = True
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        source = self.client[0] if self.client else "-"
        counts = _sources(self.server_state)
        counts[source] += 1
        self._source = source
        if counts[source] > self._limits.max_connections_per_source:
            self._refused = True
            self._answer_and_linger(SOURCE_LIMITED)
            return
        self._arm(HEADER_TIMEOUT, TIMEOUT_408)

    # -- write deadline: a reader that takes nothing for write_timeout is cut off --------

    def pause_writing(self) -> None:
        # The transport's buffer is full: the response waits (backpressure) for the
        # reader, but not forever (nginx send_timeout). An export held open by a
        # reader that never reads would keep its memory and its store cursor.
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(
                self._limits.write_timeout, self._write_expired
            )

    def resume_writing(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().resume_writing()

    def _write_expired(self) -> None:
        self._write_deadline = None
        # abort(), not close(): close() would wait for the buffer to drain, which is
        # what is not happening. The app's stream sees a disconnect and stops.
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        if self._lingering:
            self._lingering = False
            _sources(self.server_state)[LINGERING] -= 1
        if self._source is not None:
            counts = _sources(self.server_state)
            counts[self._source] -= 1
            if counts[self._source] <= 0:
                del counts[self._source]
            self._source = None
        super().connection_lost(exc)

    def _problem(self, answer: Answer) -> bytes:
        """``answer`` with a request id, recorded like any refusal of a stranger:
        these requests never reach the app, and their ids must be traceable too."""
        ids, refusals = _gateway_parts(self.app, self.server_state)
        request_id = ids.next_id()
        if refusals is not None:
            refusals.record(self._source or "-", request_id, answer[1], answer[0])
        return _response(answer, request_id)

    def _answer_and_linger(self, answer: Answer) -> None:
        # A refused connection is on its way out: it must not count against the total
        # and make everyone else's requests look like an overload.
        if not self._lingering:
            self._lingering = True
            _sources(self.server_state)[LINGERING] += 1
        self.transport.write(self._problem(answer))
        # Half-close and linger a moment rather than close: closing with the
        # caller's request still unread makes the kernel send a reset, and the
        # caller would lose the answer. Whatever else it sends is ignored.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER, None)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields = 0
        self._header_bytes = 0
        self._arm(HEADER_TIMEOUT, TIMEOUT_408)

    def on_headers_complete(self) -> None:
        self._arm(BODY_TIMEOUT, None)
        if (
            len(self.connections) - _sources(self.server_state)[LINGERING]
            > self._limits.max_connections
            or len(self.tasks) >= self._limits.max_connections
        ) and self.url.split(b"?", 1)[0] not in HEALTH_PATHS:
            self._disarm()
            self._refused = True
            self._answer_and_linger(OVERLOADED)
            raise ValueError("connection limits exceeded")  # stops the parser, as _refuse
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # -- header limits -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if len(self.url) + len(url) > MAX_TARGET_BYTES:
            self._refuse(URI_414)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._fields > MAX_HEADER_FIELDS or self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(FIELDS_431)
        super().on_header(name, value)

    def _refuse(self, answer: Answer) -> None:
        if not self._refused:
            self._refused = True
            self._disarm()
            self.transport.write(self._problem(answer))
            self.transport.close()
        # Stop the parser: httptools turns this into HttpParserCallbackError, which
        # uvicorn would answer with a 400 that send_400_response now suppresses.
        raise ValueError("request limits exceeded")

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own answer to unparsable HTTP is plain text without a request id.
        if self._refused:
            return
        self._refused = True
        self._disarm()
        self.transport.write(self._problem(MALFORMED_400))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)


def _sources(server_state: Any) -> Counter[str]:
    """Open connections per peer address, kept on the server's shared state."""
    counts: Counter[str] | None = getattr(server_state, "gateway_sources", None)
    if counts is None:
        counts = Counter()
        server_state.gateway_sources = counts
    return counts


_DEFAULT_LIMITS = Limits()


def _limits_of(app: Any) -> Limits:
    state = getattr(app, "state", None)
    gateway = state.get("gateway") if state is not None else None
    settings = getattr(gateway, "settings", None)
    limits = getattr(settings, "limits", None)
    return limits if isinstance(limits, Limits) else _DEFAULT_LIMITS


def _gateway_parts(app: Any, server_state: Any) -> tuple[RequestIds, Any]:
    """The served gateway's request ids and refusal aggregates, when the app is the
    gateway (uvicorn hands protocols the app it loaded); fresh ids otherwise."""
    state = getattr(app, "state", None)
    gateway = state.get("gateway") if state is not None else None
    ids = getattr(gateway, "request_ids", None)
    if ids is None:
        ids = getattr(server_state, "gateway_request_ids", None)
        if ids is None:
            ids = server_state.gateway_request_ids = RequestIds()
    return ids, getattr(gateway, "refusals", None)


def uvicorn_options(*, log_level: str = "info") -> dict[str, Any]:
    """The server options of ``gateway serve``; tests serve with the same ones."""
    return {
        "http": GuardedHttpToolsProtocol,
        "log_level": log_level,
        "proxy_headers": False,  # X-Forwarded-* from callers is never trusted
        "server_header": False,
        "date_header": True,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 10,
        # The protocol limits connections per source and in total, and keeps health
        # answerable; uvicorn's own limit would answer everything with plain text.
        "limit_concurrency": None,
        "access_log": False,
        "log_config": None,  # keep the JSON logging the CLI configured
    }


class BindError(Exception):
    """The address cannot be listened on; the message is one line with a hint."""


class StartError(Exception):
    """The server bound its port but the app did not start (the log says why)."""


_BIND_HINTS = {
    errno.EADDRINUSE: "another program is listening there (see it with: ss -ltnp "
    "'sport = :{port}'); stop it, or choose another port with --port or GATEWAY_PORT",
    errno.EACCES: "ports below 1024 need privileges; choose a port of 1024 or more "
    "with --port or GATEWAY_PORT",
    errno.EADDRNOTAVAIL: "this machine has no such address; use 127.0.0.1, 0.0.0.0 or one "
    "of its own addresses with --host or GATEWAY_HOST",
}


def bind(host: str, port: int) -> socket.socket:
    """The listening socket of ``gateway serve``, bound here rather than inside uvicorn,
    so that a taken port is a one-line error with a hint instead of a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        hint = _BIND_HINTS.get(exc.errno or 0, "check --host and --port").format(port=port)
        raise BindError(f"cannot listen on {host}:{port}: {reason}; {hint}") from None
    except (socket.gaierror, UnicodeError) as exc:  # pragma: no cover - OSError above
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)  # worker processes serve on it
    return sock


def serve(
    settings: Settings,
    sock: socket.socket,
    sequencer: Callable[[], int] | None = None,
) -> None:
    """Run uvicorn on ``sock`` (from :func:`bind`; closed on return): in this process,
    or, with several workers or an audit ``sequencer`` process, in worker processes
    forked by a :class:`~gateway.supervisor.Supervisor`."""
    import uvicorn

    from gateway.supervisor import STARTUP_FAILURE, Supervisor

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("gateway").info(
        "listening on http://%s:%d (%d worker%s); /readyz says when lookups can be answered",
        shown,
        port,
        settings.workers,
        "s" if settings.workers != 1 else "",
    )
    options: dict[str, Any] = {"host": settings.host, "port": settings.port}
    options.update(uvicorn_options(log_level=settings.log_level))

    def worker() -> int:
        from gateway.app import create_app

        server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
        server.run(sockets=[sock])
        return 0 if server.started else STARTUP_FAILURE

    try:
        if settings.workers > 1 or sequencer is not None:
            _import_worker_modules(settings, options)  # once, here: the forks share them
            ok = Supervisor(settings.workers, worker, sequencer).run()
        else:
            ok = worker() == 0
        if not ok:
            raise StartError("the gateway did not start; the log above says why")
    finally:
        sock.close()


def _import_worker_modules(settings: Settings, options: dict[str, Any]) -> None:
    """Import every module a worker loads when it starts, before the workers are
    forked, so that the modules are pages they share rather than copies each one
    makes: build the app and uvicorn's configuration once and drop them. Nothing
    starts (the app opens its stores and connections in its lifespan)."""
    import uvicorn

    import gateway.audit.sequencer  # noqa: F401  (the workers' client of the sequencer)
    from gateway.app import create_app

    config = uvicorn.Config(create_app(settings), **options)
    config.load()  # the protocol, lifespan and middleware modules
    config.get_loop_factory()  # uvloop
