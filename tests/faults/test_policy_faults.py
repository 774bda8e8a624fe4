"""The policy file going bad while lookups flow (reliability catalogue (2) #16-#18).

The file is damaged the ways editors, deploy scripts and full disks damage it:
a YAML syntax error, a schema error, a truncated write, deletion. The last good
policy stays in force, every lookup is decided under a version that was really
loaded, and a good file is swapped in whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.demo.upstream import DemoUpstreamConfig
from tests.faults.support import (
    ADMIN,
    ALICE_SCORE,
    SCORE_PATH,
    LookupLoad,
    export_and_verify,
    roomy_policy,
    roomy_policy_text,
    wait_for,
)
from tests.support.gateway import running_gateway

ROOMY_UPSTREAM = DemoUpstreamConfig(calls_per_second=1e6, calls_per_day=10**9)
HR = {"key": "demo-hr-key"}


def _syntax_error(path: Path) -> None:
    path.write_text(roomy_policy_text().replace("\nrules:\n", "\nrules: [\n", 1))


def _schema_error(path: Path) -> None:
    path.write_text(roomy_policy_text().replace("action: deny", "action: permit", 1))


def _truncated_mid_rule(path: Path) -> None:
    text = roomy_policy_text()
    path.write_text(text[: text.index("  - id: deny-hr-clients") + 30])


def _truncated_before_rules(path: Path) -> None:
    text = roomy_policy_text()
    path.write_text(text[: text.index("\nrules:\n")])


def _emptied(path: Path) -> None:
    path.write_text("")


def _deleted(path: Path) -> None:
    path.unlink()


DAMAGE: list[tuple[str, Callable[[Path], None]]] = [
    ("syntax error", _syntax_error),
    ("schema error", _schema_error),
    ("truncated write", _truncated_mid_rule),
    ("emptied", _emptied),
    ("deleted", _deleted),
]


def test_corrupt_policy_under_load_keeps_the_last_good_one(tmp_path: Path) -> None:
    """Lookups never fail while the file is damaged five ways in turn; /admin/policy
    names the pending error; every audit record names a version that was loaded;
    a valid new file then takes over."""
    policy = roomy_policy(tmp_path)
    with (
        running_gateway(tmp_path / "var", upstream_config=ROOMY_UPSTREAM, policies=policy) as gw,
        httpx.Client(base_url=gw.url, headers=ADMIN, timeout=10) as admin,
    ):
        first = admin.get("/admin/policy").json()
        assert first["pending_error"] is None
        with LookupLoad(gw.url, threads=4) as load:
            wait_for(lambda: len(load.snapshot()) >= 20, 5, "lookups to flow")
            previous: list[str] | None = None
            for what, damage in DAMAGE:
                # Same size and mtime in the same tick would hide a change from stat.
                time.sleep(0.02)
                damage(policy)

                def refused(before: list[str] | None = previous) -> bool:
                    # This damage's own refusal, not the one still pending from the last:
                    # a change is read once the file has held still for an interval.
                    status = admin.get("/admin/policy").json()
                    pending = status["pending_error"]
                    return (
                        bool(pending)
                        and pending != before
                        and status["version"] == first["version"]
                    )

                wait_for(refused, 3, f"the {what} to be refused")
                previous = admin.get("/admin/policy").json()["pending_error"]
                time.sleep(0.15)  # lookups keep flowing under the old version
            # A valid change (a stricter limit that still leaves room) is swapped in.
            policy.write_text(
                roomy_policy_text().replace("calls_per_second: 100000", "calls_per_second: 90000")
            )

            def swapped() -> bool:
                status = admin.get("/admin/policy").json()
                return status["version"] != first["version"] and status["pending_error"] is None

            wait_for(swapped, 3, "the repaired policy to be loaded")
            second = admin.get("/admin/policy").json()
            swapped_at = time.monotonic()
            wait_for(
                lambda: any(a.at > swapped_at + 0.1 for a in load.snapshot()),
                3,
                "lookups under the new policy",
            )
        log = export_and_verify(gw.url)
    answers = load.snapshot()
    assert not load.errors
    assert len(answers) >= 100
    assert {a.status for a in answers} == {200}
    assert all(ALICE_SCORE in a.body for a in answers)

    assert log.result.ok, str(log.result)
    loads = [r for r in log.records if r.kind == "policy.load"]
    loaded = {r.policy_version for r in loads if r.decision == "loaded"}
    assert loaded == {first["version"], second["version"]}
    rejected = [r for r in loads if r.decision == "rejected"]
    assert len(rejected) >= len(DAMAGE)
    assert {r.policy_version for r in rejected} == {first["version"]}  # the one kept
    assert all(r.detail for r in rejected)  # with the reason
    # Format 2: the intent names the version; its outcome refers to it by request id.
    lookups = [r for r in log.records if r.kind in ("lookup.intent", "lookup")]
    assert {r.policy_version for r in lookups} - {None} == loaded
    for answer in answers:
        kinds = log.kinds_of(answer.request_id)
        assert kinds == ["lookup.intent", "lookup"]
        versions = {r.policy_version for r in log.by_request(answer.request_id)} - {None}
        assert len(versions) == 1  # each lookup decided under one version


def test_policy_truncated_before_its_rules_is_refused(tmp_path: Path) -> None:
    policy = roomy_policy(tmp_path)
    with (
        running_gateway(tmp_path / "var", upstream_config=ROOMY_UPSTREAM, policies=policy) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as client,
    ):
        before = client.get("/admin/policy", headers=ADMIN).json()
        assert client.get(SCORE_PATH, params=HR).status_code == 403
        _truncated_before_rules(policy)
        time.sleep(0.5)  # five reload intervals
        after = client.get("/admin/policy", headers=ADMIN).json()
        hr = client.get(SCORE_PATH, params=HR)
    assert hr.status_code == 403, f"the HR client got {hr.status_code}: {hr.text}"
    assert after["version"] == before["version"]
    assert after["pending_error"]
