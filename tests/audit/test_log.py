"""AuditLog: group commit, fail closed, checkpoints, recovery after a crash."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.audit.log import AuditIntegrityError, AuditLog
from gateway.audit.merkle import leaf_hash, root_of
from gateway.audit.record import canonical_bytes
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_export
from gateway.errors import AuditUnavailable
from tests.audit.support import export_bytes, fill, make_record


def test_concurrent_appends_share_commits(store: AuditStore, keyring: KeyRing) -> None:
    """2,000 concurrent appends commit in a few batches and get seqs in call order."""

    async def scenario() -> tuple[list[int], int]:
        log = AuditLog(store, keyring, max_batch=512)
        await log.start()
        seqs = await asyncio.gather(*(log.append(make_record(i)) for i in range(2000)))
        commits = log.stats.commits
        await log.close()
        return list(seqs), commits

    seqs, commits = asyncio.run(scenario())
    assert seqs == list(range(2000))
    assert commits <= 20
    leaves = [leaf_hash(canonical_bytes(make_record(i))) for i in range(2000)]
    assert store.head().root() == root_of(leaves)


def test_append_returns_only_after_commit(store: AuditStore, keyring: KeyRing) -> None:
    """When append returns, another connection already sees the record."""

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        seq = await log.append(make_record(0))
        with sqlite3.connect(store.engine.url.database or "") as other:
            row = other.execute("SELECT body FROM audit_record WHERE seq = ?", (seq,)).fetchone()
        assert row[0] == canonical_bytes(make_record(0))
        await log.close()

    asyncio.run(scenario())


def test_append_returns_only_after_the_log_is_on_disk(
    store: AuditStore, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite a batch commits without waiting for the disk, and its appends return
    only once the syncer's fsync of the write-ahead log returned. While one sync is
    slow the writer commits later batches; one sync then acknowledges them all."""
    import os
    import threading

    gate = threading.Event()
    syncs: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if fd == store._wal_fd:
            syncs.append(fd)
            gate.wait(10)
        real_fsync(fd)

    monkeypatch.setattr("gateway.audit.store.os.fsync", slow_fsync)
    assert store.syncs_separately

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        first = asyncio.ensure_future(log.append(make_record(0)))
        await asyncio.sleep(0.3)
        assert not first.done()  # committed, not yet on disk: no answer
        assert store.count_records() == 1
        later = [asyncio.ensure_future(log.append(make_record(i))) for i in range(1, 50)]
        await asyncio.sleep(0.3)
        assert store.count_records() == 50  # committed while the first sync waits
        assert not any(f.done() for f in later)
        gate.set()
        assert await asyncio.gather(first, *later) == list(range(50))
        assert len(syncs) <= 3  # the first, then one for everything behind it
        await log.close()

    asyncio.run(scenario())


def test_a_failed_sync_fails_its_appends_closed(
    store: AuditStore, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the write-ahead log cannot be synced, the batch's callers get
    AuditUnavailable (no score), the log turns unhealthy, and later appends
    succeed once the disk does again."""
    import os

    failing = [True]
    real_fsync = os.fsync

    def flaky_fsync(fd: int) -> None:
        if fd == store._wal_fd and failing[0]:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr("gateway.audit.store.os.fsync", flaky_fsync)

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        with pytest.raises(AuditUnavailable):
            await log.append(make_record(0))
        assert not log.healthy()
        failing[0] = False
        assert await log.append(make_record(1)) == 1
        assert log.healthy()
        await log.close()

    asyncio.run(scenario())


def _break_inserts(store: AuditStore) -> sqlite3.Connection:
    """A real store failure: the database refuses every insert (like a full disk)."""
    conn = sqlite3.connect(store.engine.url.database or "")
    conn.execute(
        "CREATE TRIGGER fail_inserts BEFORE INSERT ON audit_record "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    conn.commit()
    return conn


def test_store_failure_fails_closed_and_recovers(store: AuditStore, keyring: KeyRing) -> None:
    """While the store refuses writes every append raises AuditUnavailable; then seqs continue."""

    async def scenario() -> None:
        log = AuditLog(store, keyring, checkpoint_interval=0.05)
        await log.start()
        assert await fill(log, 10) == list(range(10))
        conn = _break_inserts(store)
        results = await asyncio.gather(
            *(log.append(make_record(i)) for i in range(10, 60)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailable) for r in results)
        assert not log.healthy()
        conn.execute("DROP TRIGGER fail_inserts")
        conn.commit()
        conn.close()
        assert await log.append(make_record(99)) == 10  # the frontier did not advance
        assert log.healthy()
        await log.close()

    asyncio.run(scenario())
    assert store.count_records() == 11
    data = export_bytes(store, keyring)
    assert verify_export([data], keyring.public_keys).ok


def test_probe_restores_health_without_traffic(store: AuditStore, keyring: KeyRing) -> None:
    """After a failure, /readyz recovers once the store works again, with no new append."""

    async def scenario() -> None:
        log = AuditLog(store, keyring, checkpoint_interval=0.02)
        await log.start()
        conn = _break_inserts(store)
        with pytest.raises(AuditUnavailable):
            await log.append(make_record(0))
        assert not log.healthy()
        conn.execute("DROP TRIGGER fail_inserts")
        conn.commit()
        conn.close()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if log.healthy():
                break
        assert log.healthy()
        await log.close()

    asyncio.run(scenario())


def _remove_database(store: AuditStore) -> None:
    """Close the store and delete its file: a reconnect finds no tables."""
    store.close()
    path = Path(store.engine.url.database or "")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_closed_engine_fails_closed(store: AuditStore, keyring: KeyRing) -> None:
    """A log whose store was closed under it never returns a seq."""

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        _remove_database(store)
        with pytest.raises(AuditUnavailable):
            await log.append(make_record(0))
        await log.close()

    asyncio.run(scenario())


def test_append_after_close_is_refused(store: AuditStore, keyring: KeyRing) -> None:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        await log.close()
        with pytest.raises(AuditUnavailable):
            await log.append(make_record(0))

    asyncio.run(scenario())


def test_checkpoints_while_records_flow(store: AuditStore, keyring: KeyRing) -> None:
    """Checkpoints are signed on a timer while records flow, on demand, and at close."""
    clock = [1_800_000_000.0]

    async def scenario() -> None:
        log = AuditLog(store, keyring, clock=lambda: clock[0], checkpoint_interval=1.0)
        await log.start()
        await fill(log, 5)
        on_demand = await log.checkpoint()
        assert on_demand.size == 5
        assert await log.checkpoint() == on_demand  # an unchanged tree is not re-signed
        await fill(log, 5, start=5)
        clock[0] += 2
        await asyncio.sleep(0.05)
        await fill(log, 1, start=10)
        await log.close()

    asyncio.run(scenario())
    latest = store.latest_checkpoint()
    assert latest is not None
    checkpoint, frontier = latest
    assert checkpoint.size == 11
    assert checkpoint.verify(keyring.public_keys[checkpoint.key_id])
    assert frontier.root() == checkpoint.root_hash


def test_restart_continues_the_log(data_dir: Path, keyring: KeyRing) -> None:
    async def run(count: int, start: int) -> list[int]:
        store = AuditStore.open(data_dir=data_dir)
        log = AuditLog(store, keyring)
        await log.start()
        seqs = await fill(log, count, start=start)
        await log.close()
        store.close()
        return seqs

    assert asyncio.run(run(30, 0)) == list(range(30))
    assert asyncio.run(run(30, 30)) == list(range(30, 60))


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param("UPDATE audit_record SET body = x'7b7d' WHERE seq = 12", id="changed-body"),
        pytest.param("DELETE FROM audit_record WHERE seq = 12", id="deleted-row"),
        pytest.param("UPDATE audit_head SET size = 19", id="head-behind-rows"),
    ],
)
def test_start_refuses_a_tampered_tail(data_dir: Path, keyring: KeyRing, tamper: str) -> None:
    """Start-up re-checks the rows after the last checkpoint and refuses a broken tail."""

    async def write() -> None:
        store = AuditStore.open(data_dir=data_dir)
        log = AuditLog(store, keyring)
        await log.start()
        await fill(log, 10)
        await log.checkpoint()
        await fill(log, 10, start=10)
        # Simulate a crash: no close(), so no checkpoint covers 10..19.
        assert log._thread is not None
        log._accepting = False
        store.close()

    asyncio.run(write())
    with sqlite3.connect(data_dir / "audit.db") as conn:
        conn.execute("DELETE FROM audit_checkpoint WHERE size > 10")
        conn.execute(tamper)

    async def restart() -> None:
        store = AuditStore.open(data_dir=data_dir)
        try:
            with pytest.raises(AuditIntegrityError):
                await AuditLog(store, keyring).start()
        finally:
            store.close()

    asyncio.run(restart())


CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gateway.audit.log import AuditLog
    from gateway.audit.signing import KeyRing
    from gateway.audit.store import AuditStore
    from tests.audit.support import make_record

    async def main() -> None:
        data_dir = Path(sys.argv[1])
        store = AuditStore.open(data_dir=data_dir)
        log = AuditLog(store, KeyRing.load_or_create(data_dir), checkpoint_interval=0.01)
        await log.start()
        i = 0
        while True:
            seqs = await asyncio.gather(*(log.append(make_record(i + k)) for k in range(40)))
            i += 40
            print(max(seqs), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_after", [pytest.param(200, id="early"), pytest.param(3000, id="late")]
)
def test_kill_9_leaves_a_consistent_log(data_dir: Path, kill_after: int) -> None:
    """SIGKILL during appends: restart finds contiguous seqs, every acknowledged record, a valid export."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(data_dir)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdout is not None
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= kill_after:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert acknowledged >= kill_after

    keyring = KeyRing.load(data_dir)

    async def restart() -> int:
        store = AuditStore.open(data_dir=data_dir)
        log = AuditLog(store, keyring)
        await log.start()
        size = log.size
        assert await log.append(make_record(10**6)) == size
        await log.close()
        store.close()
        return size

    size = asyncio.run(restart())
    assert size > acknowledged  # nothing acknowledged was lost
    store = AuditStore.open(data_dir=data_dir)
    try:
        assert store.count_records() == size + 1
        result = verify_export([export_bytes(store, keyring)], keyring.public_keys)
    finally:
        store.close()
    assert result.ok, str(result)
    assert result.size == size + 1


def test_writer_survives_an_unexpected_error(
    store: AuditStore, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug-shaped exception in the store fails its batch closed; the next batch works."""
    real = store.append_batch
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("unexpected")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        monkeypatch.setattr(store, "append_batch", flaky)
        with pytest.raises(AuditUnavailable):
            await log.append(make_record(0))
        assert await log.append(make_record(1)) == 0
        await log.close()

    asyncio.run(scenario())
