"""A TCP relay on loopback that a test can cut: a database becoming unreachable.

Connections through the relay are forwarded byte for byte to the real server. While
``cut`` is held, every open connection is reset and new ones are refused at once, as
when a database host restarts or a network path fails; afterwards the relay forwards
again. The server itself is never touched, so other tests sharing it see nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class Relay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._listener.close()
        self._reset_all()
        self._thread.join(timeout=5)

    @contextlib.contextmanager
    def cut(self) -> Iterator[None]:
        """Reset every connection and refuse new ones until the block ends."""
        self._cut.set()
        self._reset_all()
        try:
            yield
        finally:
            self._cut.clear()

    def _reset_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for s in sockets:  # the pumps see the reset and close them
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # Each socket is the source of exactly one pump, which closes it.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
            source.close()
