"""``gateway policy apply``: check, test cases, replay, diff, and only then the write.

The active file is a copy of the shipped policy with its cases beside it; the
audit log is a generated month of over 10,000 lookups; the gateway that picks the
change up is the real one, watching the file.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.audit.lookups import iter_store_records, read_record
from gateway.audit.store import AuditStore
from gateway.cli import main
from gateway.clients import issue_admin_token
from tests.audit.traffic import Planned, build_log, plan
from tests.support.gateway import SHIPPED_POLICY, copy_shipped_policy, running_gateway

ADMIN = {"Authorization": "Bearer demo-admin-token"}
DENY_SUPPORT_PENDING = """  - id: deny-support-pending
    reason: Support agents must not see scores still being computed.
    source: internal test policy
    when:
      client: support-desk
      outcome: pending
    action: deny

"""


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Planned]]:
    data_dir = tmp_path_factory.mktemp("apply") / "data"
    planned = plan(10_600, seed=3)
    build_log(data_dir, planned)
    return data_dir, planned


@pytest.fixture
def site(tmp_path: Path, month: tuple[Path, list[Planned]]) -> tuple[Path, Path]:
    """An active policy file with its test cases, and a data dir holding the month."""
    active = copy_shipped_policy(tmp_path)  # with the policy-tests/ it names
    data_dir = tmp_path / "data"
    shutil.copytree(month[0], data_dir)
    return active, data_dir


def variant(tmp_path: Path, name: str, change: Callable[[str], str]) -> Path:
    path = tmp_path / name
    path.write_text(change(SHIPPED_POLICY.read_text()))
    return path


def tighten(text: str) -> str:
    return text.replace("\nrules:\n", "\nrules:\n" + DENY_SUPPORT_PENDING, 1)


def drop_rule(rule_id: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        start = text.index(f"  - id: {rule_id}\n")
        end = text.find("  - id: ", start + 1)
        return text[:start] + (text[end:] if end != -1 else "")

    return change


@pytest.mark.parametrize(
    ("change", "why"),
    [
        pytest.param(drop_rule("deny-hr-clients"), "test case(s) fail", id="failing-cases"),
        pytest.param(lambda t: t.replace("action: deny", "action: dney", 1), "has errors",
                     id="invalid-file"),
        pytest.param(lambda t: t.replace("calls_per_second: 9\n", "calls_per_second: 20\n"),
                     "loosens", id="loosening-higher-limit"),
    ],
)  # fmt: skip
def test_apply_refuses_and_changes_nothing(
    site: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Callable[[str], str],
    why: str,
) -> None:
    """A file that does not check, whose test cases fail, or that loosens the policy is
    refused, and the active file is left byte for byte as it was."""
    active, data_dir = site
    before = active.read_bytes()
    proposed = variant(tmp_path, "new.yaml", change)
    code = main(["policy", "apply", str(proposed), "--to", str(active),
                 "--data-dir", str(data_dir), "--yes", "--as", "dana"])  # fmt: skip
    assert code == 1
    assert why in capsys.readouterr().err
    assert active.read_bytes() == before
    assert not (data_dir / "policy-apply.json").exists()


def test_apply_without_yes_and_without_a_terminal_refuses(
    site: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scripts must say --yes: with no terminal to ask on, nothing is written."""
    active, data_dir = site
    before = active.read_bytes()
    proposed = variant(tmp_path, "new.yaml", tighten)
    code = main(["policy", "apply", str(proposed), "--to", str(active),
                 "--data-dir", str(data_dir)])  # fmt: skip
    assert code == 1
    assert "give --yes" in capsys.readouterr().err
    assert active.read_bytes() == before


def _loads(data_dir: Path) -> list[tuple[str | None, str | None]]:
    store = AuditStore.open(data_dir=data_dir)
    try:
        views = [read_record(body) for _, body in iter_store_records(store)]
    finally:
        store.close()
    return [(v.policy_version, v.detail) for v in views if v.kind == "policy.load"]


def _wait_for(url: str, version: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        status: dict[str, object] = httpx.get(f"{url}/admin/policy", headers=ADMIN).json()
        if status["version"] == version or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_apply_writes_the_file_the_gateway_loads_and_names_who(
    site: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After check, cases, replay and diff, the file is replaced; the running gateway
    loads it and its policy.load record names the actor and the change. A loosening
    saved straight to the file is marked in /admin/policy, the record and the report."""
    active, data_dir = site
    proposed = variant(tmp_path, "new.yaml", tighten)
    with running_gateway(data_dir, policies=active) as gw:
        code = main(["policy", "apply", str(proposed), "--to", str(active),
                     "--data-dir", str(data_dir), "--yes", "--as", "dana"])  # fmt: skip
        assert code == 0
        out = capsys.readouterr().out
        for step in ("1. check", "2. test cases", "3. replay", "4. what changes"):
            assert step in out
        assert "rule added: deny-support-pending (deny, when client support-desk" in out
        assert "allow->deny" in out
        assert active.read_bytes() == proposed.read_bytes()
        version = out.split("applied ")[1].split(" ")[0]
        status = _wait_for(gw.url, version)
        assert status["version"] == version
        assert status.get("loosening") is None

        # Someone saves a loosening directly, bypassing apply. (Dropping a rule would
        # fail the policy's own cases and never go live, require_tests; a higher
        # limit passes them and still gives callers more.)
        higher = proposed.read_text().replace("calls_per_second: 9\n", "calls_per_second: 50\n", 1)
        assert higher != proposed.read_text()
        active.write_text(higher)
        deadline = time.monotonic() + 10
        while status["version"] == version and time.monotonic() < deadline:
            time.sleep(0.05)
            status = httpx.get(f"{gw.url}/admin/policy", headers=ADMIN).json()
        assert status["loosening"] == ["limit rule limit-klout-terms allows more calls"]
        loosened = str(status["version"])
        # The load's audit record is written by a task of its own: wait for it.
        deadline = time.monotonic() + 10
        while True:
            report = httpx.get(f"{gw.url}/admin/report.json", headers=ADMIN, timeout=60)
            entries = [v for v in report.json()["policy_versions"] if v["version"] == loosened]
            if (entries and entries[0]["loads"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [ld["loosening"] for ld in entries[0]["loads"]] == [True]
    details = [d for v, d in _loads(data_dir) if v == version]
    assert details
    assert "applied by cli:dana" in (details[-1] or "")
    assert "rule added: deny-support-pending" in (details[-1] or "")
    last = _loads(data_dir)[-1][1] or ""
    assert "LOOSENING saved outside" in last
    assert "limit-klout-terms" in last


def test_admin_apply_writes_the_file_under_the_tokens_id(
    site: tuple[Path, Path], tmp_path: Path
) -> None:
    """``POST /admin/policy/apply`` (role policy) refuses a file whose cases fail, with
    the failing cases; a good file is written, loaded, and its policy.load record
    names the token's id."""
    active, data_dir = site
    before = active.read_bytes()
    token, secret = issue_admin_token(data_dir, "policy")
    auditor = issue_admin_token(data_dir, "auditor")[1]
    headers = {"Authorization": f"Bearer {secret}"}
    with running_gateway(data_dir, policies=active) as gw:
        url = f"{gw.url}/admin/policy/apply"
        good = variant(tmp_path, "good.yaml", tighten).read_bytes()
        forbidden = httpx.post(url, content=good, headers={"Authorization": f"Bearer {auditor}"})
        assert forbidden.status_code == 403
        bad = variant(tmp_path, "bad.yaml", drop_rule("deny-hr-clients")).read_bytes()
        r = httpx.post(url, content=bad, headers=headers, timeout=60)
        assert r.status_code == 200
        refused = r.json()
        assert refused["applied"] is False
        assert refused["refused"].startswith("3 test case(s) fail")
        assert any("did not match deny-hr-clients" in e for e in refused["reasons"])
        assert active.read_bytes() == before
        r = httpx.post(url, content=good, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        applied = r.json()
        assert applied["applied"] is True
        assert applied["actor"] == token.id
        assert applied["diff"][0].startswith("rule added: deny-support-pending")
        assert active.read_bytes() == good
        assert _wait_for(gw.url, applied["version"])["version"] == applied["version"]
        deadline = time.monotonic() + 10
        while not any(v == applied["version"] for v, _ in _loads(data_dir)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    details = [d for v, d in _loads(data_dir) if v == applied["version"]]
    assert f"applied by {token.id}" in (details[-1] or "")
