"""Real servers on loopback for tests: any ASGI app under uvicorn in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.server import uvicorn_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _ThreadServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the host process owns signals
        yield


@contextlib.contextmanager
def serve_asgi(app: Any, *, port: int | None = None, **config: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a background thread; yield its base URL.

    The server runs its own event loop, with the options ``gateway serve`` uses
    (``gateway.server.uvicorn_options``), so the app's lifespan, its upstream client,
    its audit writer and the connection guards all run exactly as in production.
    """
    port = port or free_port()
    options = {**uvicorn_options(log_level="warning"), **config}
    cfg = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="auto", **options)
    server = _ThreadServer(cfg)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
