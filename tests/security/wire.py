"""Raw HTTP/1.1 over a socket: what httpx and TestClient would normalise away.

A corpus file holds a request as exact bytes. Three placeholders are expanded
at send time, so the files stay small and hand-editable:

* ``{{HOST}}``: the gateway's ``127.0.0.1:port``;
* ``{{REPEAT:count:text}}``: ``text`` repeated ``count`` times; ``text`` may use
  Python byte escapes (``\\r\\n``, ``\\x00``), may hold another repeat, and
  must not otherwise contain ``}}``;
* ``{{CONTENT_LENGTH}}``: the length in bytes of everything after the first
  blank line, once expanded.

:func:`exchange` sends the bytes and reads back every response until the server
closes the connection or stays quiet, with a hard deadline, so no case can hang
the suite.
"""

from __future__ import annotations

import codecs
import re
import socket
import threading
import time
from dataclasses import dataclass, field

# Innermost first: the text of a match holds no "{{", so repeats can nest.
_REPEAT = re.compile(rb"\{\{REPEAT:(\d+):((?:(?!\{\{).)*?)\}\}", re.DOTALL)
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")

#: How long to wait, after a keep-alive response, for a second response that
#: would show the server read two requests where the client sent one.
QUIET_AFTER_KEEP_ALIVE = 0.3


def render(template: bytes, host: str) -> bytes:
    """Expand the corpus placeholders in ``template``."""

    def repeat(match: re.Match[bytes]) -> bytes:
        text: bytes = codecs.escape_decode(match.group(2))[0]
        return text * int(match.group(1))

    data = template.replace(b"{{HOST}}", host.encode())
    while (expanded := _REPEAT.sub(repeat, data)) != data:
        data = expanded
    if b"{{CONTENT_LENGTH}}" in data:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("{{CONTENT_LENGTH}} needs a blank line before the body")
        data = head.replace(b"{{CONTENT_LENGTH}}", str(len(body)).encode()) + sep + body
    return data


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"


@dataclass
class Exchange:
    """What came back for one request: parsed responses and how the connection ended."""

    raw: bytes = b""
    responses: list[Response] = field(default_factory=list)
    closed: bool = False  # the server closed (or reset) the connection
    timed_out: bool = False  # the deadline passed with the connection still open
    first_response_after: float | None = None  # seconds from the last byte sent
    leftover: bytes = b""  # bytes after the last complete response
    send_error: str | None = None

    @property
    def response(self) -> Response | None:
        return self.responses[0] if self.responses else None


def _parse_one(buf: bytes) -> tuple[Response, int] | None:
    """One complete response at the start of ``buf`` and its length, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    match = _STATUS_LINE.match(buf)
    if match is None:
        raise ValueError(f"not an HTTP/1.x response: {buf[:80]!r}")
    lines = buf[match.end() : end].split(b"\r\n") if end > match.end() else []
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()))
    start = end + 4
    response = Response(int(match.group(1)), buf[match.start() : match.end()], headers, b"")
    if "chunked" in (response.header("transfer-encoding") or "").lower():
        pos = start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(buf[pos:line_end].split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if len(buf) < pos:
                return None
            if size == 0:  # no trailers in anything this suite talks to
                response.body = buf[start:pos]
                return response, pos
    length = int(response.header("content-length") or 0)
    if len(buf) - start < length:
        return None
    response.body = buf[start : start + length]
    return response, start + length


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> Exchange:
    """Send ``data`` on a fresh connection; read until close, quiet or ``timeout``.

    The request is written from a second thread so that a server which answers
    early (and closes before reading the rest) is still heard: its answer is read
    while the client is still sending.
    """
    result = Exchange()
    deadline = time.monotonic() + timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent_at = [time.monotonic()]

    def write() -> None:
        try:
            sock.sendall(data)
        except OSError as exc:  # the server closed early: its answer is what counts
            result.send_error = type(exc).__name__
        sent_at[0] = time.monotonic()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    buf = b""
    quiet_until: float | None = None
    try:
        while True:
            now = time.monotonic()
            limit = deadline if quiet_until is None else min(deadline, quiet_until)
            if now >= limit:
                result.timed_out = quiet_until is None
                break
            sock.settimeout(limit - now)
            try:
                chunk = sock.recv(256 * 1024)
            except TimeoutError:
                continue
            except ConnectionResetError:
                result.closed = True
                break
            if not chunk:
                result.closed = True
                break
            buf += chunk
            while (parsed := _parse_one(buf)) is not None:
                response, used = parsed
                if not result.responses:
                    result.first_response_after = max(0.0, time.monotonic() - sent_at[0])
                result.responses.append(response)
                result.raw += buf[:used]
                buf = buf[used:]
                # After a keep-alive answer, listen briefly for a second one.
                quiet_until = None if response.closes else time.monotonic() + QUIET_AFTER_KEEP_ALIVE
    finally:
        sock.close()
        writer.join(timeout=1.0)
    result.raw += buf
    result.leftover = buf
    return result
