"""The store on SQLite and PostgreSQL: batches, head, checkpoints, subjects, isolation."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.audit.log import AuditLog
from gateway.audit.merkle import Frontier, leaf_hash, root_of
from gateway.audit.record import canonical_bytes
from gateway.audit.signing import KeyRing
from gateway.audit.store import (
    AuditStore,
    PreparedRecord,
    StoreError,
    binary_copy,
    database_url,
)
from gateway.audit.verify import verify_export
from tests.audit.support import export_bytes, fill, make_entry


def _prepared(i: int) -> PreparedRecord:
    record, index = make_entry(i, subjects=["hmac-sha256:a", "hmac-sha256:b"] if i % 2 else ())
    body = canonical_bytes(record)
    return PreparedRecord(record, body, leaf_hash(body), index)


def _exercise(store: AuditStore) -> None:
    first, frontier = store.append_batch([_prepared(i) for i in range(5)], Frontier())
    assert first == 0
    second, frontier = store.append_batch([_prepared(i) for i in range(5, 9)], frontier)
    assert second == 5
    head = store.head()
    assert head.size == 9
    assert head.root() == root_of([leaf_hash(_prepared(i).body) for i in range(9)])
    assert [r.seq for r in store.iter_records(0, 9, chunk=4)] == list(range(9))
    subject = [r.seq for r in store.subject_records(["hmac-sha256:a"])]
    assert subject == [1, 3, 5, 7]


def test_sqlite_store(store: AuditStore) -> None:
    _exercise(store)


def test_stale_frontier_reloads_from_head(store: AuditStore) -> None:
    """A writer behind the head (another replica appended) continues after the head, not over it."""
    _, frontier = store.append_batch([_prepared(0)], Frontier())
    store.append_batch([_prepared(1)], frontier)  # "another replica"
    first, _ = store.append_batch([_prepared(2)], frontier)
    assert first == 2


def test_failed_batch_commits_nothing(store: AuditStore) -> None:
    """A batch whose subject rows fail after its records were inserted leaves no trace."""
    _, frontier = store.append_batch([_prepared(0)], Frontier())
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER fail_subjects BEFORE INSERT ON audit_subject_block "
                "BEGIN SELECT RAISE(ABORT, 'injected'); END"
            )
        )
    with pytest.raises(StoreError):
        store.append_batch([_prepared(1), _prepared(2)], frontier)
    assert store.head().size == 1
    assert store.count_records() == 1
    with store.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER fail_subjects"))
    first, _ = store.append_batch([_prepared(1)], frontier)
    assert first == 1


def test_sqlite_is_durable_wal(store: AuditStore) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_database_url_pins_psycopg() -> None:
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.postgres
def test_postgres_store(pg_store: AuditStore) -> None:
    _exercise(pg_store)


@pytest.mark.postgres
def test_postgres_log_round_trip(pg_store: AuditStore, keyring: KeyRing) -> None:
    """Group commit, checkpoints and export work the same on PostgreSQL."""

    async def scenario() -> list[int]:
        log = AuditLog(pg_store, keyring)
        await log.start()
        seqs = await fill(log, 300, per_round=100)
        await log.close()
        return seqs

    assert asyncio.run(scenario()) == list(range(300))
    assert verify_export([export_bytes(pg_store, keyring)], keyring.public_keys).ok


@pytest.mark.postgres
def test_two_postgres_writers_share_one_order(
    pg_store: AuditStore, pg_schema: str, keyring: KeyRing
) -> None:
    """Two replicas (two stores, two logs) append to one log; seqs never collide."""
    from tests.support.postgres import PG_URL

    other = AuditStore.open(url=PG_URL, schema=pg_schema)

    async def scenario() -> tuple[list[int], list[int]]:
        a, b = AuditLog(pg_store, keyring), AuditLog(other, keyring)
        await a.start()
        await b.start()
        sa, sb = await asyncio.gather(
            fill(a, 200, per_round=20), fill(b, 200, start=1000, per_round=20)
        )
        await a.close()
        await b.close()
        return sa, sb

    try:
        sa, sb = asyncio.run(scenario())
    finally:
        other.close()
    assert sorted(sa + sb) == list(range(400))
    assert verify_export([export_bytes(pg_store, keyring)], keyring.public_keys).ok
    with pg_store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_record")).scalar_one() == 400


@pytest.mark.parametrize("which", ["store", "pg_store"])
def test_subject_index_is_one_block_per_batch_and_prunes_by_range(
    which: str, request: pytest.FixtureRequest
) -> None:
    """One index row per committed batch, on SQLite and PostgreSQL; retention drops
    whole blocks and trims the blocks that straddle its range, so the records outside
    it are still found."""
    store: AuditStore = request.getfixturevalue(which)
    _, frontier = store.append_batch([_prepared(i) for i in range(6)], Frontier())
    store.append_batch([_prepared(i) for i in range(6, 12)], frontier)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_subject_block").scalar() == 2
    assert [r.seq for r in store.subject_records(["hmac-sha256:b"])] == [1, 3, 5, 7, 9, 11]
    store.prune(3, 8)
    assert [r.seq for r in store.subject_records(["hmac-sha256:b"])] == [1, 9, 11]
    store.prune(0, 12)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_subject_block").scalar() == 0


def test_subject_index_ignores_unaligned_matches_and_reads_the_old_index(
    store: AuditStore,
) -> None:
    """A tag's bytes found across two references are not a match; rows of the
    per-reference index that earlier releases wrote are still found."""
    from gateway.audit.store import block_seqs, subject_key, subject_tag

    key = subject_key("hmac-sha256:a")
    refs = b"\x00" * 4 + key + b"\x00" * 12  # the key straddles two 12-byte entries
    assert block_seqs(100, refs, [key]) == set()
    assert block_seqs(100, key + (7).to_bytes(4, "big"), [key]) == {107}

    store.append_batch([_prepared(0), _prepared(2)], Frontier())  # nobody indexed
    with store.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO audit_subject (tag, seq) VALUES (:tag, 1)"),
            {"tag": subject_tag("hmac-sha256:a")},
        )
    assert [r.seq for r in store.subject_records(["hmac-sha256:a"])] == [1]


def test_postgres_copy_keeps_every_byte_of_text_and_bytea(pg_store: AuditStore) -> None:
    """The writer's binary COPY keeps tabs, line ends, backslashes and non-ASCII text,
    tells NULL from a literal ``\\N`` or an empty string, and bytea bodies come back
    byte for byte, in a batch of several rows."""
    columns = [
        ("2026-12-01T00:00:00Z", "lookup", "r\\1\ttab", "c\nd\re", None, "\\N"),
        ("2026-12-01T00:00:01Z", "lookup.intent", "ünïcødé ✓", "", "hiring", None),
    ]
    bodies = [bytes(range(256)), b"{" + bytes(range(255, -1, -1)) + b"}"]
    items = [
        PreparedRecord(None, body, leaf_hash(body), ("hmac-sha256:a",), cols)
        for cols, body in zip(columns, bodies, strict=True)
    ]
    pg_store.append_batch(items, Frontier())
    with pg_store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT seq, time, kind, request_id, client, purpose, upstream, leaf_hash, body "
                "FROM audit_record ORDER BY seq"
            )
        ).all()
    assert [r[0] for r in rows] == [0, 1]
    assert [tuple(r[1:7]) for r in rows] == columns
    assert [bytes(r[8]) for r in rows] == bodies
    assert [bytes(r[7]) for r in rows] == [leaf_hash(b) for b in bodies]
    assert [r.seq for r in pg_store.subject_records(["hmac-sha256:a"])] == [0, 1]


def test_binary_copy_encodes_each_type_and_refuses_others() -> None:
    """The payload follows PostgreSQL's binary COPY layout (checked by hand here; the
    round trip through a real server is the test above)."""
    payload = binary_copy([(2**40, "é", None, b"\x00\x01")])
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00" + bytes(8))
    assert payload.endswith(b"\xff\xff")
    row = payload[19:-2]
    assert row == (
        b"\x00\x04"  # four fields
        + b"\x00\x00\x00\x08" + (2**40).to_bytes(8, "big")
        + b"\x00\x00\x00\x02" + "é".encode()
        + b"\xff\xff\xff\xff"  # NULL
        + b"\x00\x00\x00\x02\x00\x01"
    )  # fmt: skip
    assert binary_copy([(-1,)])[19:-2] == b"\x00\x01\x00\x00\x00\x08" + b"\xff" * 8
    with pytest.raises(TypeError, match="float"):
        binary_copy([(1.5,)])


def test_sqlite_log_positions_are_the_rowid(store: AuditStore) -> None:
    """On SQLite a table keyed by a log position keeps one b-tree: its key is the
    rowid, not a second unique index that every append would also update."""
    _exercise(store)
    with store.engine.connect() as conn:
        indexes = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN "
            "('audit_record', 'audit_subject_block', 'audit_checkpoint')"
        ).all()
        assert indexes == []
        pairs = conn.exec_driver_sql("SELECT rowid, seq FROM audit_record ORDER BY seq").all()
    assert [tuple(p) for p in pairs] == [(i, i) for i in range(9)]
    raw = sqlite3.connect(store.engine.url.database or "")
    try:
        with pytest.raises(sqlite3.IntegrityError):  # a position taken twice is refused
            raw.execute(_TAKEN_TWICE)
    finally:
        raw.close()


_TAKEN_TWICE = (
    "INSERT INTO audit_record (seq, time, kind, request_id, leaf_hash, body) "
    "VALUES (0, 't', 'lookup', 'r', x'00', x'7b7d')"
)


# The tables as releases before the rowid key created them (BIGINT keys).
_OLD_TABLES = (
    "CREATE TABLE audit_record (seq BIGINT NOT NULL, time VARCHAR NOT NULL, "
    "kind VARCHAR NOT NULL, request_id VARCHAR NOT NULL, client VARCHAR, purpose VARCHAR, "
    "upstream VARCHAR, leaf_hash BLOB NOT NULL, body BLOB NOT NULL, PRIMARY KEY (seq))",
    "CREATE TABLE audit_subject_block (first_seq BIGINT NOT NULL, end_seq BIGINT NOT NULL, "
    "refs BLOB NOT NULL, PRIMARY KEY (first_seq))",
    "CREATE TABLE audit_checkpoint (size BIGINT NOT NULL, origin VARCHAR NOT NULL, "
    "root VARCHAR NOT NULL, time VARCHAR NOT NULL, key_id VARCHAR NOT NULL, "
    "signature VARCHAR NOT NULL, frontier BLOB NOT NULL, PRIMARY KEY (size))",
)


def test_sqlite_log_made_by_an_earlier_release_still_appends_and_verifies(
    tmp_path: Path, keyring: KeyRing
) -> None:
    """A log whose tables have the older BIGINT keys opens, takes records through
    the log, refuses a position taken twice, and its export verifies: the rowid
    key changes only tables created from now on."""
    conn = sqlite3.connect(tmp_path / "audit.db")
    for statement in _OLD_TABLES:
        conn.execute(statement)
    conn.close()

    async def run() -> bytes:
        store = AuditStore.open(data_dir=tmp_path)
        try:
            log = AuditLog(store, keyring)
            await log.start()
            assert len(await fill(log, 40)) == 40
            await log.close()
            assert store.head().size == 40
            return export_bytes(store, keyring)
        finally:
            store.close()

    data = asyncio.run(run())
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "sqlite_autoindex_audit_record_1" in names  # still the older table
        with pytest.raises(sqlite3.IntegrityError):  # a position taken twice is refused
            conn.execute(_TAKEN_TWICE)
    finally:
        conn.close()
    assert verify_export([data], keyring.public_keys).ok
