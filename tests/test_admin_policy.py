"""The admin policy endpoints and problem bodies: validate never fails, refused changes
are shown and audited, request ids come only from the gateway."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from gateway.audit.record import AnyRecord, decode_record
from tests.strategies import hostile_policy_texts
from tests.support.gateway import (
    SHIPPED_POLICY,
    RunningGateway,
    copy_shipped_policy,
    running_gateway,
)

ADMIN = {"Authorization": "Bearer demo-admin-token"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
GATEWAY_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One gateway for the property test: starting one per example would take minutes."""
    with (
        running_gateway(tmp_path_factory.mktemp("var")) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as c,
    ):
        yield c


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(text=hostile_policy_texts(SHIPPED_POLICY.read_text()))
def test_validate_never_answers_5xx(shared: httpx.Client, text: bytes) -> None:
    """Hostile YAML (tags, huge numbers, broken encodings, bytes) gets a 200 answer about
    the text: valid, or every problem with its line and column."""
    r = shared.post("/admin/policy/validate", headers=ADMIN, content=text)
    assert r.status_code == 200, r.text
    body = r.json()
    if not body["valid"]:
        assert body["problems"]
        assert all(p["line"] >= 1 and p["col"] >= 1 for p in body["problems"])


@pytest.mark.parametrize(
    ("tail", "code"),
    [
        pytest.param("zzz: !foo bar\n", "yaml.tag", id="unknown-tag"),
        pytest.param("zzz: !!int abc\n", "yaml.value", id="int-tag"),
        pytest.param("zzz: !!float abc\n", "yaml.value", id="float-tag"),
        pytest.param("zzz: " + "7" * 100_000 + "\n", "yaml.number", id="100000-digit-integer"),
    ],
)
def test_validate_refuses_the_inputs_that_answered_500(
    client: httpx.Client, tail: str, code: str
) -> None:
    """The saves that once made validate answer 500 are problems at their line."""
    text = SHIPPED_POLICY.read_text() + tail
    r = client.post("/admin/policy/validate", headers=ADMIN, content=text.encode())
    assert r.status_code == 200
    body = r.json()
    assert body["valid"] is False
    problem = next(p for p in body["problems"] if p["code"] == code)
    assert problem["line"] == text.count("\n")


def test_validate_runs_the_policy_s_own_cases(client: httpx.Client) -> None:
    """A text whose cases fail is not valid, and the failing cases name their file."""
    text = SHIPPED_POLICY.read_text().replace("    action: coarsen\n", "    action: deny\n")
    body = client.post("/admin/policy/validate", headers=ADMIN, content=text.encode()).json()
    assert body["valid"] is False
    failing = [p for p in body["problems"] if p["code"] == "policy.test_failed"]
    assert failing
    assert all(p["file"].endswith("support.yaml") for p in failing)
    good = client.post(
        "/admin/policy/validate", headers=ADMIN, content=SHIPPED_POLICY.read_bytes()
    ).json()
    assert good["valid"] is True
    assert good["cases_passed"] >= 20


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("X-Request-Id-Internal", id="internal-header"),
        pytest.param("X-Request-Id", id="public-header"),
        pytest.param("X-Correlation-Id", id="correlation-header"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param("GET", "/admin/policy", {}, id="unauthenticated"),
        pytest.param("GET", "/admin/audit/export?untill=x", ADMIN, id="bad-parameter"),
        pytest.param("POST", "/admin/policy/explain", ADMIN, id="bad-body"),
        pytest.param("GET", "/klout/v2/user.json/5001/score", {}, id="proxy"),
    ],
)
def test_request_ids_come_only_from_the_gateway(
    client: httpx.Client, header: str, method: str, path: str, headers: dict[str, str]
) -> None:
    """A caller's request-id header is never echoed: the body and X-Request-Id carry
    the one id the gateway made."""
    r = client.request(method, path, headers={**headers, header: "forged-0000"}, content=b"{")
    assert r.status_code >= 400
    assert r.headers["content-type"] == "application/problem+json"
    assert b"forged-0000" not in r.content
    assert "forged" not in r.headers["x-request-id"]
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert GATEWAY_ID.match(r.headers["x-request-id"])


def _wait(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_change_whose_cases_fail_is_shown_and_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting coarsen-support-desk while its cases expect it keeps the last good
    policy; /admin/policy shows the failing cases with RFC 3339 times, and the refusal
    is an audit record. The support desk still gets the band only. A later save with
    a YAML tag is refused and recorded too, and a good save is logged and recorded."""
    caplog.set_level(logging.INFO, logger="gateway")
    policy = copy_shipped_policy(tmp_path)
    with (
        running_gateway(tmp_path / "var", policies=policy) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
    ):
        before = c.get("/admin/policy", headers=ADMIN).json()
        assert RFC3339.match(before["loaded_at"])
        assert before["require_tests"] is True
        text = policy.read_text()
        start = text.index("  - id: coarsen-support-desk\n")
        end = text.index("\n  - id: ", start + 1) + 1
        policy.write_text(text[:start] + text[end:])
        _wait(lambda: c.get("/admin/policy", headers=ADMIN).json().get("pending_error"))
        status = c.get("/admin/policy", headers=ADMIN).json()
        assert status["version"] == before["version"]
        assert RFC3339.match(status["pending_since"])
        assert len(status["failing_cases"]) == 2
        assert all("support.yaml" in line for line in status["failing_cases"])
        answer = c.get("/klout/v2/user.json/5001/score", params={"key": "demo-support-key"}).json()
        assert (answer["score"], answer["bucket"]) == (70.0, "70-79")  # alice's 71.3, banded
        _wait(lambda: _refused_records(gw))
        (record,) = _refused_records(gw)
        assert record.policy_version == before["version"]
        assert record.status == 422
        assert record.detail is not None
        assert "the support desk sees the band only" in record.detail

        broken = SHIPPED_POLICY.read_text() + "zzz: !!int abc\n"
        policy.write_text(broken)
        _wait(lambda: len(_refused_records(gw)) == 2)
        tagged = _refused_records(gw)[1]
        assert tagged.detail is not None
        assert f"{policy}:{broken.count(chr(10))}:6: this value cannot be read as !!int" in (
            tagged.detail
        )
        status = c.get("/admin/policy", headers=ADMIN).json()
        assert status["failing_cases"] is None
        assert status["pending_error"][-1].startswith(f"{policy}:")

        changed = SHIPPED_POLICY.read_text().replace(
            "description: Sales CRM", "description: The sales CRM"
        )
        policy.write_text(changed)
        _wait(lambda: c.get("/admin/policy", headers=ADMIN).json()["pending_error"] is None)
        _wait(lambda: len(_loaded_records(gw)) == 2)
        loaded = _loaded_records(gw)[1]
        assert loaded.detail is not None
        assert "changes: clients changed: crm" in loaded.detail
        assert "20 test cases pass" in loaded.detail
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway"]
    assert any("in force" in m and "clients changed: crm" in m for m in logged), logged


def _policy_loads(gw: RunningGateway) -> list[AnyRecord]:
    store = gw.state.store
    assert store is not None
    records = [decode_record(r.body) for r in store.iter_records(0, store.count_records())]
    return [r for r in records if r.kind == "policy.load"]


def _refused_records(gw: RunningGateway) -> list[AnyRecord]:
    return [r for r in _policy_loads(gw) if r.decision == "refused"]


def _loaded_records(gw: RunningGateway) -> list[AnyRecord]:
    return [r for r in _policy_loads(gw) if r.decision == "loaded"]
