"""``gateway policy replay`` and ``POST /admin/policy/replay`` on a generated month.

Each proposed policy is the shipped one with one edit; the lookups it must change
are picked from the plan of the traffic, independently of the replay code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.audit.lookups import iter_store_records, read_record
from gateway.audit.store import AuditStore
from gateway.cli import main
from gateway.clients import issue_admin_token
from gateway.policies.compile import load_policy
from gateway.policies.replay import replay
from tests.audit.traffic import Planned, as_logged, build_log, plan
from tests.support.gateway import SHIPPED_POLICY, running_gateway

COUNT = 10_600

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
    data_dir = tmp_path_factory.mktemp("replay") / "data"
    planned = plan(COUNT, seed=7)
    build_log(data_dir, planned)
    return data_dir, planned


def edited(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = SHIPPED_POLICY.read_text()
    assert text.count(old) == 1, old
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


def without_rule(tmp_path: Path, rule_id: str) -> Path:
    text = SHIPPED_POLICY.read_text()
    start = text.index(f"  - id: {rule_id}\n")
    end = text.find("  - id: ", start + 1)
    path = tmp_path / f"without-{rule_id}.yaml"
    path.write_text(text[:start] + (text[end:] if end != -1 else ""))
    return path


def allow_ad_targeting(tmp_path: Path) -> Path:
    """Drop the advertising rule and the vendor's ban on advertising."""
    path = without_rule(tmp_path, "deny-advertising")
    text = path.read_text()
    assert text.count("        - marketing.advertising\n") == 1
    path.write_text(text.replace("        - marketing.advertising\n", ""))
    return path


def finished(planned: list[Planned]) -> list[Planned]:
    """The lookups as the log holds them: an unfinished one is its intent (allowed,
    no outcome yet)."""
    return [as_logged(p) for p in planned if p.client is not None]


def test_tightening_reports_exactly_the_lookups_it_changes(
    month: tuple[Path, list[Planned]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new deny rule for pending answers to the support desk changes exactly the
    logged support-desk lookups whose outcome was pending, all allow→deny; exit 0."""
    data_dir, planned = month
    proposed = edited(tmp_path, "tight.yaml", "\nrules:\n", "\nrules:\n" + DENY_SUPPORT_PENDING)
    want = {p.request_id for p in finished(planned)
            if p.client == "support-desk" and p.outcome == "pending"}  # fmt: skip
    assert len(want) > 100
    store = AuditStore.open(data_dir=data_dir)
    try:
        summary = replay(
            iter_store_records(store),
            load_policy(SHIPPED_POLICY),
            load_policy(proposed),
            keep_ids=True,
        )
    finally:
        store.close()
    assert set(summary.changed_ids) == want
    assert summary.changed == len(want)
    assert {k: v.count for k, v in summary.changes.items()} == {"allow->deny": len(want)}
    assert summary.by_rule == {"deny-support-pending": len(want)}
    assert summary.by_client == {"support-desk": len(want)}
    assert summary.loosening is False
    assert set(summary.changes["allow->deny"].examples) <= want

    code = main(["policy", "replay", str(proposed), "--current", str(SHIPPED_POLICY),
                 "--data-dir", str(data_dir)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert f"{len(want):,} would change" in out
    assert "allow->deny" in out
    assert "only tightens" in out


@pytest.mark.parametrize(
    ("make", "category", "select"),
    [
        pytest.param(
            lambda tmp: without_rule(tmp, "neutralize-missing"),
            "neutral->real",
            lambda p: p.outcome in ("missing", "pending") and p.decision == "neutralize",
            id="neutral-answer-becomes-real",
        ),
        pytest.param(
            lambda tmp: without_rule(tmp, "coarsen-support-desk"),
            "coarsening removed",
            lambda p: p.client == "support-desk" and p.outcome == "found",
            id="coarsening-removed",
        ),
        pytest.param(
            allow_ad_targeting,
            "deny->allow",
            lambda p: p.client == "email-marketing" and p.decision == "deny",
            id="deny-becomes-allow",
        ),
        pytest.param(
            lambda tmp: edited(tmp, "limit.yaml", "calls_per_second: 9\n",
                               "calls_per_second: 20\n"),
            "limit raised",
            lambda p: (p.decision != "deny" or p.error == "limit.exceeded")
            and p.outcome != "objected" and p.purpose is not None,
            id="higher-limit",
        ),
    ],
)  # fmt: skip
def test_loosening_exits_non_zero(
    month: tuple[Path, list[Planned]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    category: str,
    select: Callable[[Planned], bool],
) -> None:
    """A change that gives callers more than before is counted under its category,
    lookup for lookup, and makes replay exit 1 unless --allow-loosening is given."""
    data_dir, planned = month
    proposed = make(tmp_path)
    want = sum(1 for p in finished(planned) if select(p))
    assert want > 50
    args = ["policy", "replay", str(proposed), "--current", str(SHIPPED_POLICY),
            "--data-dir", str(data_dir), "--json"]  # fmt: skip
    assert main(args) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["loosening"] is True
    assert summary["changes"][category]["count"] == want
    assert main([*args, "--allow-loosening"]) == 0


def test_admin_replay_answers_the_same(month: tuple[Path, list[Planned]], tmp_path: Path) -> None:
    """``POST /admin/policy/replay`` with the admin token replays against the active
    policy and gives the same counts; a broken file is answered with its problems."""
    source, planned = month
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    proposed = edited(tmp_path, "tight.yaml", "\nrules:\n", "\nrules:\n" + DENY_SUPPORT_PENDING)
    want = sum(1 for p in finished(planned)
               if p.client == "support-desk" and p.outcome == "pending")  # fmt: skip
    admin = {"Authorization": "Bearer demo-admin-token"}
    with running_gateway(data_dir) as gw:
        url = f"{gw.url}/admin/policy/replay"
        assert httpx.post(url, content=proposed.read_bytes()).status_code == 401
        r = httpx.post(url, content=proposed.read_bytes(), headers=admin, timeout=60)
        assert r.status_code == 200
        body = r.json()
        assert body["valid"] is True
        assert body["replay"]["changes"]["allow->deny"]["count"] == want
        assert body["replay"]["loosening"] is False
        bad = httpx.post(url, content=b"rules: [\n", headers=admin, timeout=60)
        assert bad.status_code == 200
        assert bad.json()["valid"] is False
        assert bad.json()["problems"][0].startswith("proposed.yaml:")


def test_admin_routes_need_their_role_and_are_on_the_record(
    month: tuple[Path, list[Planned]], tmp_path: Path
) -> None:
    """Replay needs the policy role and the report the auditor role (operator may do
    both); each act is an admin.* record under the token's id, refusals included."""
    source, _ = month
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    auditor, auditor_token = issue_admin_token(data_dir, "auditor")
    policy, policy_token = issue_admin_token(data_dir, "policy")
    proposed = edited(tmp_path, "tight.yaml", "\nrules:\n", "\nrules:\n" + DENY_SUPPORT_PENDING)

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    with running_gateway(data_dir) as gw:
        replay_url, report_url = f"{gw.url}/admin/policy/replay", f"{gw.url}/admin/report"
        body = proposed.read_bytes()
        assert (
            httpx.post(replay_url, content=body, headers=bearer(auditor_token)).status_code == 403
        )
        assert httpx.get(report_url, headers=bearer(policy_token)).status_code == 403
        r = httpx.post(replay_url, content=body, headers=bearer(policy_token), timeout=60)
        assert r.status_code == 200
        r = httpx.get(f"{report_url}.json", headers=bearer(auditor_token), timeout=60)
        assert r.status_code == 200
    store = AuditStore.open(data_dir=data_dir)
    try:
        acts = [
            (v.kind, getattr(v, "actor", None), v.status)
            for v in (read_record(b) for _, b in iter_store_records(store))
            if v.kind.startswith("admin.")
        ]
    finally:
        store.close()
    assert ("admin.replay", auditor.id, 403) in acts
    assert ("admin.report", policy.id, 403) in acts
    assert ("admin.replay", policy.id, 200) in acts
    assert ("admin.report", auditor.id, 200) in acts
