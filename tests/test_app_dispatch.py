"""GatewayApp hands proxied requests straight to the proxy and everything else to
Litestar, with the same answers Litestar's own routing gave (gateway/app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from litestar import get
from litestar.params import FromPath

from gateway.app import GatewayApp, create_app
from gateway.settings import Settings
from tests.support.gateway import running_gateway

CRM = {"key": "demo-crm-key"}


def test_the_framework_keeps_its_own_first_segments() -> None:
    app = create_app(Settings(demo=True))
    assert isinstance(app, GatewayApp)
    assert app._framework_segments == {"admin", "healthz", "readyz", "metrics", "schema"}


def test_a_route_that_could_take_any_first_segment_keeps_the_router() -> None:
    """Should a route ever start with a parameter, every request goes through the
    router again: the fast path must never take a request Litestar would route."""

    @get("/{name:str}/info")
    async def info(name: FromPath[str]) -> dict[str, Any]:
        return {"name": name}

    app = GatewayApp(route_handlers=[info])
    app.route_past_framework({})
    assert app._proxy_holder is None


def test_each_path_reaches_what_it_reached_through_the_router(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "var") as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
        lookup = c.get("/klout/v2/user.json/5001/score", params=CRM)
        assert (lookup.status_code, lookup.json()["score"]) == (200, 71.3)
        assert lookup.headers["x-request-id"]

        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/schema/openapi.json").json()["info"]["title"] == "Score gateway admin API"
        admin = c.get("/admin/policy")  # Litestar's route: an admin token is required
        assert admin.status_code == 401
        assert admin.headers["content-type"] == "application/problem+json"

        # Not the framework's, not an upstream: the proxy's own problem, as before.
        unknown = c.get("/nosuch/v2/user.json/1/score", params=CRM)
        assert (unknown.status_code, unknown.json()["code"]) == (404, "upstream.unknown")
        # An empty first segment goes through the router, which hands it to the proxy
        # (the answer the previous build gave too).
        empty = c.get("//klout/v2/user.json/5001/score", params=CRM)
        assert (empty.status_code, empty.json()["code"]) == (404, "upstream.unknown")
        # A path under a framework segment that no route matches falls to the proxy.
        under = c.get("/healthz/more", params=CRM)
        assert (under.status_code, under.json()["code"]) == (404, "upstream.unknown")
