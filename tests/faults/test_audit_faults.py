"""No log, no lookup: the audit store failing, the process dying, the keys unusable.

Reliability catalogue (2) #9-#13. The store is the real SQLite file of the running
gateway; a trigger installed from a second connection makes it abort inserts, the
way a full disk does (``chmod`` means nothing to root).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.demo.upstream import DemoUpstreamConfig, create_demo_upstream
from gateway.supervisor import SEQUENCER_NAME, WORKER_NAME
from tests.faults.support import (
    ALICE_SCORE,
    CRM,
    SCORE_PATH,
    LookupLoad,
    export_and_verify,
    records_in,
    roomy_policy,
    store_refuses_inserts,
    wait_for,
)
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.servers import free_port, serve_asgi, wait_until_serving

ROOMY_UPSTREAM = DemoUpstreamConfig(calls_per_second=1e6, calls_per_day=10**9)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(
        tmp_path / "var", upstream_config=ROOMY_UPSTREAM, policies=roomy_policy(tmp_path)
    ) as running:
        yield running


def _ready(url: str) -> int:
    return httpx.get(url + "/readyz", timeout=5).status_code


def _refused_without_score(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "audit.unavailable"
    assert "score" not in body
    assert ALICE_SCORE not in r.text


def test_unwritable_store_under_load_fails_closed_then_recovers(gw: RunningGateway) -> None:
    """While the store refuses writes, lookups get 503 audit.unavailable and never a
    score, and /readyz says not ready; afterwards lookups succeed again, and the
    exported log verifies and holds a record for every score that was served."""
    with httpx.Client(base_url=gw.url, timeout=10) as client, LookupLoad(gw.url, threads=3) as load:
        wait_for(lambda: len(load.snapshot()) >= 20, 5, "lookups before the fault")
        with store_refuses_inserts(gw.state.store):
            fault_started = time.monotonic()
            readiness = []
            for _ in range(5):
                _refused_without_score(client.get(SCORE_PATH, params=CRM))
                readiness.append(_ready(gw.url))
            # The writer's probe may flip readiness between two looks (see the xfail
            # below); right after a refused write it must be "not ready".
            assert 503 in readiness
            time.sleep(0.3)
            fault_ended = time.monotonic()
        wait_for(lambda: client.get(SCORE_PATH, params=CRM).status_code == 200, 5, "recovery")
        wait_for(lambda: _ready(gw.url) == 200, 5, "/readyz to recover")
        recovered_at = time.monotonic()
        wait_for(
            lambda: sum(a.at > recovered_at for a in load.snapshot()) >= 10, 5, "load to resume"
        )
    answers = load.snapshot()
    assert not load.errors
    during = [a for a in answers if fault_started + 0.2 < a.at < fault_ended]
    assert during, "the load saw no answer while the store was failing"
    for answer in answers:
        if answer.status == 200:
            assert ALICE_SCORE in answer.body
        else:
            assert (answer.status, answer.code) == (503, "audit.unavailable")
            assert ALICE_SCORE not in answer.body
    assert all(a.status == 503 for a in during)

    log = export_and_verify(gw.url)
    assert log.result.ok, str(log.result)
    for answer in answers:
        kinds = log.kinds_of(answer.request_id)
        if answer.status == 200:
            assert kinds == ["lookup.intent", "lookup"]
        else:
            # Nothing was served: either nothing reached the log, or an intent was
            # committed and later closed as failed once the store recovered.
            outcomes = [r for r in log.by_request(answer.request_id) if r.kind == "lookup"]
            assert all((r.status, r.error) == (503, "audit.unavailable") for r in outcomes)
            assert kinds in ([], ["lookup.intent"], ["lookup.intent", "lookup"])


def test_readiness_stays_red_while_the_store_refuses_writes(gw: RunningGateway) -> None:
    """With no traffic after a refused write, /readyz must not report ready while
    the store still cannot take a record."""
    store, audit = gw.state.store, gw.state.audit
    assert store is not None
    assert audit is not None

    def checkpointed() -> bool:
        latest = store.latest_checkpoint()
        return latest is not None and latest[0].size == audit.size

    # Idle and fully checkpointed, as before a disk fills up at night: the writer
    # has nothing of its own left to write that would fail.
    wait_for(checkpointed, 5, "a checkpoint covering every record")
    with httpx.Client(base_url=gw.url, timeout=10) as client, store_refuses_inserts(gw.state.store):
        _refused_without_score(client.get(SCORE_PATH, params=CRM))
        time.sleep(2.5)  # more than two probe intervals (checkpoint_interval = 1 s)
        ready = _ready(gw.url)
        _refused_without_score(client.get(SCORE_PATH, params=CRM))  # still refusing
        assert ready == 503


def test_store_failing_after_the_upstream_answered_returns_no_score(gw: RunningGateway) -> None:
    """The intent commits and the upstream answers, then the outcome record cannot be
    written: the caller gets 503 audit.unavailable, never the score it fetched."""
    before = len(gw.upstream.received)
    with store_refuses_inserts(gw.state.store, only_kind="lookup"):
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
    _refused_without_score(r)
    assert len(gw.upstream.received) == before + 1  # the upstream was asked and answered
    ok = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
    assert ok.status_code == 200

    log = export_and_verify(gw.url)
    assert log.result.ok, str(log.result)
    # The refused outcome is recorded as a failure once the store takes records again.
    refused = log.by_request(r.headers["x-request-id"])
    assert [x.kind for x in refused] == ["lookup.intent", "lookup"]
    assert (refused[1].status, refused[1].error, refused[1].decision) == (
        503,
        "audit.unavailable",
        "error",
    )
    assert log.kinds_of(ok.headers["x-request-id"]) == ["lookup.intent", "lookup"]


def test_orphaned_intent_is_reconciled_once_the_store_recovers(gw: RunningGateway) -> None:
    with store_refuses_inserts(gw.state.store, only_kind="lookup"):
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
    _refused_without_score(r)
    assert httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10).status_code == 200
    outcome = [
        x
        for x in export_and_verify(gw.url).by_request(r.headers["x-request-id"])
        if x.kind == "lookup"
    ]
    assert len(outcome) == 1
    assert (outcome[0].status, outcome[0].error) == (503, "audit.unavailable")


# -- kill -9 under load -----------------------------------------------------------------


def _gateway(*args: str | int | Path) -> list[str]:
    return [sys.executable, "-m", "gateway", *map(str, args)]


def _start_gateway(
    data_dir: Path, policy: Path, upstream_url: str, log: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            _gateway(
                "serve", "--demo", "--port", port, "--data-dir", data_dir,
                "--policies", policy, "--upstream", f"klout={upstream_url}", "--log-level", "warning",
                *extra,
            ),
            stdout=out,
            stderr=out,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url + "/readyz", log=log, timeout=15)
    return process, url


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _assert_log_verifies_and_covers(
    tmp_path: Path, data_dir: Path, served: set[str], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """The operator's commands, run in this process (same code, no second start-up):
    the export verifies, and every lookup a caller got a 200 for has its record."""
    export, public = tmp_path / "audit.jsonl", tmp_path / "public.pem"
    capsysbinary.readouterr()
    assert main(["audit", "export", "--out", str(export), "--data-dir", str(data_dir)]) == 0
    assert main(["keys", "public", "--data-dir", str(data_dir)]) == 0
    public.write_bytes(capsysbinary.readouterr().out)
    assert main(["audit", "verify", str(export), "--public-key", str(public), "--quiet"]) == 0
    assert capsysbinary.readouterr().out.startswith(b"OK: ")
    logged = {
        r.request_id
        for r in records_in(export.read_bytes())
        if r.kind == "lookup" and r.status == 200
    }
    assert served <= logged, f"{len(served - logged)} served lookups have no record"


@pytest.mark.slow
def test_kill_9_under_load_loses_no_served_lookup(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """SIGKILL mid-load, restart on the same data dir: the log recovers, the CLI export
    verifies, and every lookup that got a 200 has its ``lookup`` record."""
    data_dir, policy, log = tmp_path / "var", roomy_policy(tmp_path), tmp_path / "gateway.log"
    with serve_asgi(create_demo_upstream(ROOMY_UPSTREAM)) as upstream_url:
        process, url = _start_gateway(data_dir, policy, upstream_url, log)
        try:
            with LookupLoad(url, threads=6) as load:
                wait_for(lambda: len(load.snapshot()) >= 50, 10, "load to start")
                time.sleep(1.0)
                os.kill(process.pid, signal.SIGKILL)  # mid-load: lookups are in flight
                process.wait(timeout=10)
                time.sleep(0.2)  # in-flight lookups end with transport errors
            assert process.returncode == -signal.SIGKILL
            served = {a.request_id for a in load.snapshot() if a.status == 200}
            assert len(served) >= 50
            assert all(a.status == 200 for a in load.snapshot())

            process, url = _start_gateway(data_dir, policy, upstream_url, log)
            after = httpx.get(url + SCORE_PATH, params=CRM, timeout=10)
            assert after.status_code == 200
            served.add(after.headers["x-request-id"])
        finally:
            _stop(process, signal.SIGTERM)

    _assert_log_verifies_and_covers(tmp_path, data_dir, served, capsysbinary)


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # gone, or going, meanwhile
            continue
    return out


def _named_children(pid: int, name: str) -> list[int]:
    """The live children of the gateway ``pid`` that call themselves ``name`` (a
    killed one is a zombie named in brackets until the gateway reaps it)."""
    out = []
    for child in _children(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # gone, or going, meanwhile
            continue
        comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        if comm == name and state != "Z":
            out.append(child)
    return out


def _sequencer_of(pid: int) -> int | None:
    """The live audit sequencer of the gateway ``pid``."""
    found = _named_children(pid, SEQUENCER_NAME)
    return found[0] if found else None


@pytest.mark.slow
def test_kill_9_of_the_sequencer_under_load_loses_no_served_lookup(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """SIGKILL the audit sequencer mid-load: lookups in flight fail closed (503, no
    score), the gateway starts a new sequencer and serves again, the log verifies,
    and every lookup that got a 200 has its ``lookup`` record."""
    data_dir, policy, log = tmp_path / "var", roomy_policy(tmp_path), tmp_path / "gateway.log"
    with serve_asgi(create_demo_upstream(ROOMY_UPSTREAM)) as upstream_url:
        process, url = _start_gateway(
            data_dir, policy, upstream_url, log, "--audit-sequencer", "process"
        )
        try:
            with LookupLoad(url, threads=6) as load:
                wait_for(lambda: len(load.snapshot()) >= 50, 10, "load to start")
                killed = _sequencer_of(process.pid)
                assert killed is not None
                os.kill(killed, signal.SIGKILL)
                wait_for(
                    lambda: _sequencer_of(process.pid) not in (None, killed), 10, "a new sequencer"
                )
                before = len(load.snapshot())
                wait_for(
                    lambda: any(a.status == 200 for a in load.snapshot()[before:]),
                    15,
                    "lookups served again",
                )
            answers = load.snapshot()
            assert {a.status for a in answers} <= {200, 503}
            served = {a.request_id for a in answers if a.status == 200}
        finally:
            _stop(process, signal.SIGTERM)

    _assert_log_verifies_and_covers(tmp_path, data_dir, served, capsysbinary)


def _workers_of(pid: int) -> list[int]:
    """The live worker processes of the gateway ``pid`` (not its sequencer)."""
    return _named_children(pid, WORKER_NAME)


@pytest.mark.slow
def test_kill_9_of_a_worker_under_load_loses_no_served_lookup(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """SIGKILL one of two workers mid-load: its callers lose their connections (no
    score), the other worker and a new one serve on, the shared log verifies, and
    every lookup that got a 200 has its ``lookup`` record."""
    data_dir, policy, log = tmp_path / "var", roomy_policy(tmp_path), tmp_path / "gateway.log"
    with serve_asgi(create_demo_upstream(ROOMY_UPSTREAM)) as upstream_url:
        process, url = _start_gateway(data_dir, policy, upstream_url, log, "--workers", "2")
        try:
            wait_for(lambda: len(_workers_of(process.pid)) == 2, 15, "two workers")
            with LookupLoad(url, threads=6) as load:
                wait_for(lambda: len(load.snapshot()) >= 50, 10, "load to start")
                victim = _workers_of(process.pid)[0]
                os.kill(victim, signal.SIGKILL)
                before = len(load.snapshot())
                wait_for(
                    lambda: sum(a.status == 200 for a in load.snapshot()[before:]) >= 50,
                    15,
                    "lookups served after the kill",
                )
                wait_for(
                    lambda: (
                        victim not in _workers_of(process.pid)
                        and len(_workers_of(process.pid)) == 2
                    ),
                    20,
                    "a new worker in the killed one's place",
                )
            answers = load.snapshot()
            assert {a.status for a in answers} <= {200, 503}
            served = {a.request_id for a in answers if a.status == 200}
        finally:
            _stop(process, signal.SIGTERM)

    _assert_log_verifies_and_covers(tmp_path, data_dir, served, capsysbinary)


# -- signing keys at start ----------------------------------------------------------------


def _private_key(data_dir: Path) -> Path:
    keys = data_dir / "keys"
    return keys / ((keys / "ACTIVE").read_text().strip() + ".private.pem")


def _empty_private_key(data_dir: Path) -> None:
    _private_key(data_dir).write_bytes(b"")


def _unreadable_private_key(data_dir: Path) -> None:
    # As root chmod 000 still reads; a directory in the file's place cannot be read by anyone.
    path = _private_key(data_dir)
    path.unlink()
    path.mkdir()


def _public_key_only(data_dir: Path) -> None:
    _private_key(data_dir).unlink()


def _public_key_without_active(data_dir: Path) -> None:
    _private_key(data_dir).unlink()
    (data_dir / "keys" / "ACTIVE").unlink()


def _empty_active(data_dir: Path) -> None:
    (data_dir / "keys" / "ACTIVE").write_text("")


@pytest.mark.parametrize(
    ("damage", "code", "names"),
    [
        pytest.param(
            _empty_private_key, "audit.signing_key_invalid", ".private.pem", id="empty-private-key"
        ),
        pytest.param(
            _unreadable_private_key,
            "audit.signing_key_invalid",
            ".private.pem",
            id="unreadable-private-key",
        ),
        pytest.param(
            _public_key_only,
            "audit.signing_key_missing",
            ".private.pem",
            id="public-key-without-private",
        ),
        pytest.param(
            _public_key_without_active,
            "audit.signing_key_missing",
            "keys",
            id="public-key-only-no-active",
        ),
        pytest.param(
            _empty_active,
            "audit.signing_key_missing",
            "ACTIVE",
            id="empty-active-pointer",
        ),
    ],
)
def test_serve_refuses_to_start_without_a_usable_signing_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None],
    code: str,
    names: str,
) -> None:
    """Catalogue (2) #13: exit 1 with the error code and the file, and no new key made."""
    data = tmp_path / "var"
    assert main(["keys", "generate", "--data-dir", str(data)]) == 0
    damage(data)
    before = sorted(p.name for p in (data / "keys").iterdir())
    capsys.readouterr()
    assert main(["serve", "--demo", "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gateway serve: {code}: "), err
    assert names in err
    assert sorted(p.name for p in (data / "keys").iterdir()) == before
