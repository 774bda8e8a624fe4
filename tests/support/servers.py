"""Real servers on loopback for tests: any ASGI app under uvicorn in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.server import uvicorn_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_serving(
    process: subprocess.Popen[bytes], url: str, *, log: Path | None = None, timeout: float = 20.0
) -> None:
    """Poll ``url`` until it answers 200 while ``process`` runs. If the process
    exits, or ``timeout`` passes (then it is killed, with its session if it leads
    one), fail with the end of its ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited {process.returncode}: {_tail(log)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                if os.getsid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            process.wait(timeout=20)
            raise AssertionError(f"{url} did not answer within {timeout} s: {_tail(log)}")
        time.sleep(0.05)


def _tail(log: Path | None) -> str:
    return log.read_text()[-4000:] if log is not None and log.exists() else "(no log)"


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
