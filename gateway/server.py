"""How the gateway is served: uvicorn with httptools, plus the limits uvicorn lacks.

uvicorn times out idle keep-alive connections but not a client that stops half
way through its headers or body, and it sets no limit on the number or size of
header fields. :class:`GuardedHttpToolsProtocol` adds both at the connection, so
they hold for proxied lookups and admin routes alike, before any application code
runs (reliability.md catalogue 1 #25 and #29; nginx ``client_header_timeout``,
``large_client_header_buffers``; Envoy ``request_headers_timeout``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError, render_problem

if TYPE_CHECKING:
    from gateway.settings import Settings

# Callers are enterprise systems on a company network sending small requests: a few
# seconds is generous, and short deadlines keep stalled sockets from piling up.
HEADER_TIMEOUT = 5.0  # seconds from connection or request start to the end of headers
BODY_TIMEOUT = 5.0  # seconds from the end of headers to the end of the body
MAX_HEADER_FIELDS = 100  # Envoy's default
MAX_HEADER_BYTES = 32 * 1024  # nginx: 4 buffers of 8k
MAX_TARGET_BYTES = 16 * 1024  # the request target; the proxy's own limit is lower


def _response(status: int, code: str, detail: str) -> bytes:
    """A complete problem+json answer written straight to the socket, then closed.

    These refusals come before there is a request (no request id yet); their body is
    rendered by the one problem renderer all other answers use."""
    status, headers, body = render_problem(GatewayError(detail, code=code, status=status), None)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    head += [name + b": " + value for name, value in headers]
    head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


TIMEOUT_408 = _response(408, "request.timeout", "the request was not sent in time")
URI_414 = _response(414, "request.uri_too_long", "the request target is too long")
FIELDS_431 = _response(
    431,
    "request.header_too_large",
    "too many header fields, or too many bytes of them",
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol with header/body read deadlines and header limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._fields = 0
        self._header_bytes = 0
        self._refused = False

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, seconds: float, reason: bytes | None) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, answer: bytes | None) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if answer is not None and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(answer)
        # A body that stops arriving: closing makes the app's receive() say disconnect.
        self._refused = True
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEADER_TIMEOUT, TIMEOUT_408)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields = 0
        self._header_bytes = 0
        self._arm(HEADER_TIMEOUT, TIMEOUT_408)

    def on_headers_complete(self) -> None:
        self._arm(BODY_TIMEOUT, None)
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

    def _refuse(self, answer: bytes) -> None:
        if not self._refused:
            self._refused = True
            self._disarm()
            self.transport.write(answer)
            self.transport.close()
        # Stop the parser: httptools turns this into HttpParserCallbackError, which
        # uvicorn would answer with a 400 that send_400_response now suppresses.
        raise ValueError("request limits exceeded")

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            return
        super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)


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
        "limit_concurrency": 2048,
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
    settings_env: str,
    encode_path: Callable[[object], str],
) -> None:
    """Run uvicorn on ``sock`` (from :func:`bind`; closed on return): one process, or
    ``workers`` processes that each build the app from the settings handed to them in
    ``settings_env``."""
    import os

    import msgspec
    import uvicorn
    from uvicorn.supervisors import Multiprocess

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
    try:
        if settings.workers > 1:
            os.environ[settings_env] = msgspec.json.encode(settings, enc_hook=encode_path).decode()
            config = uvicorn.Config(
                "gateway.cli:app_from_env", factory=True, workers=settings.workers, **options
            )
            Multiprocess(config, sockets=[sock]).run()
            return
        from gateway.app import create_app

        server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
        server.run(sockets=[sock])
        if not server.started:
            raise StartError("the gateway did not start; the log above says why")
    finally:
        sock.close()
