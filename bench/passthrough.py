"""The reference for the gateway's overhead: a bare Litestar + aiohttp passthrough.

It forwards ``GET`` path and query to one upstream over one shared aiohttp session
and answers with the upstream's status, content type and body; no header copying,
no policy, no audit. Two shapes, as in ``reference/performance.md``:

* ``handler`` (row d1): a Litestar route handler with a ``{path:path}`` parameter,
  so the request goes through Litestar's routing, ``Request`` and ``Response``;
* ``mount`` (row d1m): a raw ASGI handler mounted at ``/``, which is how the
  gateway mounts its proxy (``gateway/app.py``).

Run alone::

    .venv/bin/python bench/passthrough.py --upstream http://127.0.0.1:8081 --port 8090

``bench/loadtest.py`` starts it through the uvicorn command line instead, so that
``--workers 2`` works: ``uvicorn passthrough:create_app --factory --app-dir bench``
with the upstream and shape in ``BENCH_UPSTREAM`` and ``BENCH_PASSTHROUGH_MODE``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import uvicorn
from litestar import Litestar, Request, Response, get
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

UPSTREAM_ENV = "BENCH_UPSTREAM"
MODE_ENV = "BENCH_PASSTHROUGH_MODE"
MODES = ("handler", "mount")


def create_app(upstream: str | None = None, mode: str | None = None) -> Litestar:
    """The passthrough app; arguments default to the environment (uvicorn's factory)."""
    base = (upstream or os.environ.get(UPSTREAM_ENV, "")).rstrip("/")
    shape = mode or os.environ.get(MODE_ENV, "handler")
    if not base.startswith("http://"):
        raise ValueError(f"the upstream must be an http:// URL, got {base!r} (set {UPSTREAM_ENV})")
    if shape not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {shape!r}")
    sessions: dict[str, aiohttp.ClientSession] = {}

    def target(scope: Scope) -> str:
        raw = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope["query_string"]
        return base + raw.decode("ascii") + ("?" + query.decode("ascii") if query else "")

    @get("/{path:path}", include_in_schema=False)
    async def forward(request: Request[Any, Any, Any]) -> Response[bytes]:
        async with sessions["s"].get(target(request.scope), allow_redirects=False) as answer:
            body = await answer.read()
            return Response(
                body,
                status_code=answer.status,
                media_type=answer.headers.get("content-type", "application/octet-stream"),
            )

    @asgi("/", is_mount=True, copy_scope=False, include_in_schema=False)
    async def forward_mounted(scope: Scope, receive: Receive, send: Send) -> None:
        async with sessions["s"].get(target(scope), allow_redirects=False) as answer:
            body = await answer.read()
            content_type = answer.headers.get("content-type", "application/octet-stream")
            status = answer.status
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False
        ) as session:
            sessions["s"] = session
            yield

    return Litestar(
        route_handlers=[forward if shape == "handler" else forward_mounted],
        lifespan=[lifespan],
        # Litestar's default logging config puts the root logger at INFO; the
        # reference measurements ran without per-request log lines.
        logging_config=None,
        openapi_config=None,
        debug=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8081")
    parser.add_argument("--mode", choices=MODES, default="handler")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream, args.mode),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
