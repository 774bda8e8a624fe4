"""Refusal parity: answers the vendor never sees meet every refusal vendor-bound ones do.

An objected person, an id the gateway issued and a cached answer are answered
without calling the vendor. If they skipped the quota, the circuit breaker or
the limiter, a 200 among 429s and 503s would tell who objected, or that someone
else had looked that person up. Each test drives the real gateway into a refusal
and compares every kind of lookup: same status, same headers, same problem body
apart from the request id.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import msgspec
import pytest

from gateway.demo.upstream import DemoUpstreamConfig
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.people import BOB, NO_RATE_LIMIT, policy_with_objections
from tests.support.servers import free_port

CRM = "key=demo-crm-key"
VENDOR_BOUND = "/klout/v2/user.json/5001/score"  # alice: the vendor is asked
OBJECTED = "/klout/v2/user.json/5002/score"  # bob: answered here


def _issued(c: httpx.Client) -> str:
    """A score lookup by a kloutId the gateway issued (answered here)."""
    klout_id = c.get(f"/klout/v2/identity.json/tw/1999?{CRM}").json()["id"]
    return f"/klout/v2/user.json/{klout_id}/score"


def _refusal(r: httpx.Response) -> tuple[int, list[tuple[str, str]], dict[str, object]]:
    body = msgspec.json.decode(r.content)
    assert body["request_id"] == r.headers["x-request-id"]
    body.pop("request_id")
    headers = sorted((k, v) for k, v in r.headers.items() if k not in ("x-request-id", "date"))
    return r.status_code, headers, body


def _policy(tmp_path: Path, data_dir: Path, replace: dict[str, str]) -> Path:
    return policy_with_objections(tmp_path / "policies.yaml", data_dir, BOB, replace=replace)


@pytest.mark.parametrize("cache", [0, 100], ids=["no-cache", "cache"])
def test_an_exhausted_quota_refuses_every_lookup_alike(tmp_path: Path, cache: int) -> None:
    """Three lookups a day: the fourth is 429 whether it would reach the vendor, be a
    cache hit, concern an objected person or an id the gateway issued."""
    data_dir = tmp_path / "var"
    policy = _policy(
        tmp_path, data_dir, {"      calls_per_day: 10000\n": "      calls_per_day: 3\n"}
    )
    with (
        running_gateway(data_dir, policies=policy, cache_entries=cache) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
    ):
        issued = _issued(c)  # 1
        assert c.get(f"{VENDOR_BOUND}?{CRM}").status_code == 200  # 2, cached if on
        assert c.get(f"{OBJECTED}?{CRM}").status_code == 200  # 3
        refusals = [_refusal(c.get(f"{t}?{CRM}")) for t in (VENDOR_BOUND, OBJECTED, issued)]
        if cache:
            refusals.append(_refusal(c.get(f"{VENDOR_BOUND}?{CRM}")))  # would be a hit
        assert refusals[0][0] == 429
        assert refusals[0][2]["code"] == "limit.exceeded"
        assert all(r == refusals[0] for r in refusals), refusals


def _open_breaker(gw: RunningGateway, c: httpx.Client) -> None:
    config = gw.upstream.config
    gw.upstream.config = msgspec.structs.replace(config, overload_rate=1.0)
    for _ in range(5):
        assert c.get(f"/klout/v2/user.json/5001/topics?{CRM}").status_code == 502


@pytest.mark.parametrize("cache", [0, 100], ids=["no-cache", "cache"])
def test_an_open_circuit_refuses_every_lookup_alike(tmp_path: Path, cache: int) -> None:
    """While the breaker is open, objected people, issued ids and cached answers get
    the same 503 ``upstream.circuit_open`` as lookups that would reach the vendor."""
    data_dir = tmp_path / "var"
    policy = _policy(tmp_path, data_dir, NO_RATE_LIMIT)
    with (
        running_gateway(
            data_dir,
            policies=policy,
            cache_entries=cache,
            upstream_config=DemoUpstreamConfig(calls_per_second=1e6, seed=1),
        ) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
    ):
        issued = _issued(c)
        assert c.get(f"{VENDOR_BOUND}?{CRM}").status_code == 200  # cached if on
        _open_breaker(gw, c)
        refusals = [_refusal(c.get(f"{t}?{CRM}")) for t in (VENDOR_BOUND, OBJECTED, issued)]
        assert refusals[0][0] == 503
        assert refusals[0][2]["code"] == "upstream.circuit_open"
        assert all(r == refusals[0] for r in refusals), refusals


@pytest.mark.parametrize("cache", [0, 100], ids=["no-cache", "cache"])
def test_an_unreachable_limiter_refuses_every_lookup_with_a_503(
    tmp_path: Path, cache: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: every lookup gets a 503 ``limit.unavailable`` problem with its
    request id (not a 500), the refusal is audited, /readyz turns 503, and no log
    line names a subject."""
    data_dir = tmp_path / "var"
    policy = _policy(tmp_path, data_dir, {})
    caplog.set_level(logging.INFO)
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with (
        running_gateway(data_dir, policies=policy, cache_entries=cache, redis_url=down) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
    ):
        targets = [VENDOR_BOUND, OBJECTED, "/klout/v2/identity.json/tw/1001"]
        answers = [c.get(f"{t}?{CRM}") for t in targets]
        refusals = [_refusal(a) for a in answers]
        assert refusals[0][0] == 503
        assert refusals[0][2]["code"] == "limit.unavailable"
        assert all(r == refusals[0] for r in refusals), refusals
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["limiter"] is False
        export = c.get("/admin/audit/export", headers={"Authorization": "Bearer demo-admin-token"})
        for a in answers:
            assert a.headers["x-request-id"].encode() in export.content
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "unhandled error" not in text
    for identifier in ("1001", "5001", "5002", "alice", "bob"):
        assert identifier not in text
