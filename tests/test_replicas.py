"""Two real ``gateway serve`` replicas on one PostgreSQL schema and one Redis.

They are separate processes with separate data directories (each its own signing
key), given the same pseudonym secret once, as an operator would run them behind
a load balancer. Objections made through either one hold on both within a second,
and subject access through one finds the lookups served by both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.demo.upstream import DemoUpstreamConfig, create_demo_upstream
from tests.faults.support import roomy_policy
from tests.support.postgres import PG_URL, pg_schema
from tests.support.servers import free_port, serve_asgi

__all__ = ["pg_schema"]  # the fixture, imported for this module

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "replica-test-secret-" + "x" * 24
ADMIN = {"Authorization": "Bearer demo-admin-token"}
CRM = {"key": "demo-crm-key"}


def _serve(
    data_dir: Path, policy: Path, upstream: str, schema: str, secret: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    env = {**os.environ, "GATEWAY_PSEUDONYM_SECRET": secret}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--demo", "--port", str(port),
             "--data-dir", str(data_dir), "--policies", str(policy), "--database-url", url,
             "--redis-url", REDIS_URL, "--upstream", f"klout={upstream}",
             "--log-level", "warning"],
            stdout=out,
            stderr=out,
            env=env,
        )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def _ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, f"replica exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"replica not ready: {log.read_text()[-2000:]}"
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def replicas(tmp_path: Path, pg_schema: str) -> Iterator[tuple[str, str, object, Path, str]]:
    policy = roomy_policy(tmp_path)
    config = DemoUpstreamConfig(calls_per_second=1000.0, calls_per_day=1_000_000)
    upstream = create_demo_upstream(config)
    with serve_asgi(upstream) as upstream_url:
        started = [
            _serve(
                tmp_path / name, policy, upstream_url, pg_schema, SECRET, tmp_path / f"{name}.log"
            )
            for name in ("a", "b")
        ]
        try:
            for (process, url), name in zip(started, ("a", "b"), strict=True):
                _ready(process, url, tmp_path / f"{name}.log")
            yield started[0][1], started[1][1], upstream, policy, upstream_url
        finally:
            for process, _ in started:
                _stop(process)


def _within(seconds: float, condition: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.redis
def test_objections_and_subject_access_span_two_replicas(
    replicas: tuple[str, str, object, Path, str],
) -> None:
    """An objection made through either replica holds on the other within a second,
    and subject access through one replica finds the lookups both served."""
    a, b, upstream, _policy, _ = replicas
    with httpx.Client(base_url=a) as ca, httpx.Client(base_url=b) as cb:
        for client in (ca, cb, ca, cb):
            assert client.get("/klout/v2/user.json/5001/score", params=CRM).status_code == 200
        access = ca.get(
            "/admin/audit/subject", params={"upstream": "klout", "subject": "5001"}, headers=ADMIN
        )
        assert access.status_code == 200
        lookups = [r for r in access.json()["records"] if r["record"]["kind"] == "lookup"]
        assert len(lookups) == 4  # two served by each replica, one pseudonym key

        added = ca.post(
            "/admin/objections", json={"upstream": "klout", "subjects": ["5002"]}, headers=ADMIN
        )
        assert added.status_code == 201, added.text
        took_b = _within(
            1.0,
            lambda: cb.get("/klout/v2/user.json/5002/score", params=CRM).json()["score"] == 40.0,
        )
        added = cb.post(
            "/admin/objections",
            json={"upstream": "klout", "subjects": ["twitter_id:1001"]},
            headers=ADMIN,
        )
        assert added.status_code == 201, added.text
        took_a = _within(
            1.0,
            lambda: ca.get("/klout/v2/identity.json/tw/1001", params=CRM).json()["id"] != "5001",
        )
        mark = len(upstream.received)  # type: ignore[attr-defined]
        for client in (ca, cb):
            assert client.get("/klout/v2/user.json/5002", params=CRM).status_code == 200
            assert client.get("/klout/v2/identity.json/tw/1001", params=CRM).status_code == 200
        listed = cb.get("/admin/objections", headers=ADMIN).json()["people"]
    sent = [r.path for r in list(upstream.received)[mark:]]  # type: ignore[attr-defined]
    assert sent == []
    assert took_a < 1.0
    assert took_b < 1.0
    assert len(listed) == 2


@pytest.mark.slow
def test_a_replica_under_another_pseudonym_key_refuses_to_start(
    tmp_path: Path, pg_schema: str
) -> None:
    """The store remembers the key's check value: a replica given another secret
    stops at start-up with one clear line, before it writes anything."""
    policy = roomy_policy(tmp_path)
    first, url = _serve(tmp_path / "a", policy, "http://127.0.0.1:9", pg_schema, SECRET,
                        tmp_path / "a.log")  # fmt: skip
    try:
        _ready(first, url, tmp_path / "a.log")
    finally:
        _stop(first)
    other, _ = _serve(tmp_path / "b", policy, "http://127.0.0.1:9", pg_schema, "another-" * 5,
                      tmp_path / "b.log")  # fmt: skip
    assert other.wait(timeout=30) == 1
    lines = (tmp_path / "b.log").read_text().strip().splitlines()
    assert lines[-1].startswith("gateway serve: audit.pseudonym_key_mismatch: ")
    assert "GATEWAY_PSEUDONYM_SECRET" in lines[-1]
