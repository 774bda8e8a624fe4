"""Audit storage: SQLModel tables on SQLite (embedded) or PostgreSQL (shared).

Tables (all prefixed ``audit_``):

* ``audit_record``: one row per leaf. ``seq`` (0-based leaf index, primary key),
  ``body`` (the record's canonical bytes, exactly what is hashed and exported),
  ``leaf_hash`` (``SHA-256(0x00 || body)``), and copies of a few fields for
  admin queries (``time``, ``kind``, ``request_id``, ``client``, ``purpose``,
  ``upstream``). The copies are conveniences; ``body`` is the evidence.
* ``audit_subject_block``: the subject index, one row per committed batch:
  ``first_seq`` (primary key), ``end_seq`` and ``refs``, the batch's references
  packed as 12-byte entries (an 8-byte tag of the pseudonym, :func:`subject_key`,
  then the record's offset from ``first_seq``, 4 bytes big-endian). It is
  append-only, so a commit writes one row at the right edge of one b-tree. A
  b-tree keyed by the tag took keys in random order: every batch dirtied pages all
  over it, and each dirty page went to the WAL with its fsync. With 64 lookups in
  flight that index cost more than everything else the gateway does: 1,105 req/s
  with it against 2,491 without, on one core (``bench/README.md``). Subject
  access scans the blocks in the database (``instr`` on SQLite, ``position`` on
  PostgreSQL, both in C) and re-checks each hit in Python and then against the
  record body, so tag collisions and unaligned matches are dropped.
* ``audit_subject``: ``(tag, seq)`` rows written by releases before the block
  index; still read by subject access and cleared by retention, never written.
* ``audit_head``: one row (``id = 1``): the tree ``size`` and its packed frontier
  (:class:`gateway.audit.merkle.Frontier`), updated in the same transaction as
  the records it covers, so after a crash at any moment the head matches the rows.
* ``audit_checkpoint``: signed checkpoints by ``size`` (strictly increasing),
  with the frontier at that size so recovery can re-verify only the tail.
* ``audit_meta``: ``origin``, the log identity, generated once per store.
* ``audit_meta`` also holds ``pruned_until`` once retention pruned records: rows
  below it may have an empty ``body`` (dropped), their ``leaf_hash`` kept.
* ``audit_cosignature``: witnesses' cosignature lines by ``(size, witness)``
  (:mod:`gateway.audit.witness`); exports carry them on their checkpoints.

Appends go through :meth:`AuditStore.append_batch`, called only by the log's
single writer thread, one transaction per batch (group commit), on the driver
cursor of the writer's connection: no ORM (6-10x slower per row,
reference/performance.md) and no SQLAlchemy statement building per batch (~350 µs
of CPU per commit against ~80 µs without it). The rows go to the driver as plain
tuples, because SQLAlchemy's per-row parameter processing (~8 us/row) cost more
than SQLite's insert itself:

* SQLite: multi-row ``INSERT ... VALUES (...), (...)`` statements of power-of-two
  sizes. One statement per batch instead of one step per row (each step
  releases and re-takes the GIL, so the writer queued behind the event loop for
  every row), and few distinct statements, so they stay prepared (preparing a
  512-row statement costs ~3 ms).
* PostgreSQL: ``COPY ... FROM STDIN (FORMAT BINARY)`` inside the same
  transaction, the whole batch encoded by :func:`binary_copy` and handed to the
  driver in one write. psycopg's ``executemany`` and multi-row INSERTs both
  measured ~5k rows/s here; text COPY through ``write_row`` ~20k; the binary
  payload costs the writer 5.9 instead of 8.4 µs of CPU per row, and the server
  no hex decoding of ``body`` (``bench/README.md``, issue 13 sixth pass).

Admin reads (export, subject access) use Core selects in keyset-paginated chunks.

Durability: SQLite runs in WAL mode with ``synchronous=FULL`` (a commit is on disk
when it returns), except on the writer's connection: it commits with
``synchronous=NORMAL`` and the log's syncer thread then fsyncs the write-ahead log
(:meth:`AuditStore.sync`) before any record of the batch is acknowledged, which is
what FULL does inside the commit; the next batch commits meanwhile. PostgreSQL runs
with its default ``synchronous_commit=on``.

Sequencing across replicas: every batch transaction first locks the head row
(``SELECT ... FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` takes the database
write lock on SQLite). The head row is the sequencer: it hands out the next
``seq`` values and carries the frontier. A writer whose in-memory frontier is
behind the head (another replica appended) reloads the frontier from the row
before appending. So several gateway replicas pointed at one PostgreSQL database
already append to one log in one order; the lock is held only for one batch
insert (a few milliseconds), which bounds the combined rate to roughly one
batch per lock hold. If that ever becomes the bottleneck, the Trillian design is
the next step: replicas insert into an unordered queue table and one elected
sequencer (advisory lock ``pg_try_advisory_lock``) integrates queued rows into
``audit_record`` in batches; appenders then wait for their row's ``seq``.
Each replica signs checkpoints with its own key ring; a checkpoint for a size
that already has one is skipped, so sizes stay unique.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Field, SQLModel

from gateway.audit.checkpoint import Checkpoint
from gateway.audit.merkle import Frontier
from gateway.audit.record import AnyRecord, record_subjects

SQLITE_FILE = "audit.db"
SCHEMA_LOCK = 0x61756469  # pg_advisory_xact_lock key held while creating tables
READ_CHUNK = 5000
# Bound parameters per INSERT statement: SQLite >= 3.32 allows 32766, PostgreSQL 65535.
# Multi-row statements matter on SQLite: each statement step releases and re-takes
# the GIL, and with one step per row the writer thread queues behind the event
# loop for every row (a convoy); with one statement per batch it is a few steps.
MAX_PARAMETERS = 32766
RECORD_COLUMNS = (
    "seq", "time", "kind", "request_id", "client", "purpose", "upstream", "leaf_hash", "body",
)  # fmt: skip
BLOCK_COLUMNS = ("first_seq", "end_seq", "refs")
REF_SIZE = 12  # bytes per subject reference in a block: 8 of tag, 4 of offset
# A log position as a table's key: on SQLite the column must be declared exactly
# INTEGER to be the rowid itself. Declared BIGINT, SQLite keeps a rowid b-tree and
# a separate unique index on the key, and every append updates both (measured in
# bench/README.md, issue 13 fifth pass). PostgreSQL keeps BIGINT.
SEQ = BigInteger().with_variant(Integer, "sqlite")


class RecordRow(SQLModel, table=True):
    __tablename__ = "audit_record"

    seq: int = Field(primary_key=True, sa_type=SEQ, sa_column_kwargs={"autoincrement": False})
    time: str
    kind: str
    request_id: str
    client: str | None = None
    purpose: str | None = None
    upstream: str | None = None
    leaf_hash: bytes = Field(sa_type=LargeBinary)
    body: bytes = Field(sa_type=LargeBinary)


class SubjectRow(SQLModel, table=True):
    __tablename__ = "audit_subject"
    # One b-tree keyed (tag, seq) serves subject access; on SQLite without a rowid
    # table beside it (one b-tree to update per row instead of two).
    __table_args__ = {"sqlite_with_rowid": False}

    tag: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    seq: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )


class SubjectBlockRow(SQLModel, table=True):
    """The subject references of one committed batch (see the module docstring)."""

    __tablename__ = "audit_subject_block"

    first_seq: int = Field(primary_key=True, sa_type=SEQ, sa_column_kwargs={"autoincrement": False})
    end_seq: int = Field(sa_type=BigInteger)
    refs: bytes = Field(sa_type=LargeBinary)


class HeadRow(SQLModel, table=True):
    __tablename__ = "audit_head"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    size: int = Field(sa_type=BigInteger)
    frontier: bytes = Field(sa_type=LargeBinary)


class CheckpointRow(SQLModel, table=True):
    __tablename__ = "audit_checkpoint"

    size: int = Field(primary_key=True, sa_type=SEQ, sa_column_kwargs={"autoincrement": False})
    origin: str
    root: str
    time: str
    key_id: str
    signature: str
    frontier: bytes = Field(sa_type=LargeBinary)


class CosignatureRow(SQLModel, table=True):
    """A witness's C2SP cosignature line on the checkpoint of ``size``."""

    __tablename__ = "audit_cosignature"

    size: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    witness: str = Field(primary_key=True)  # the witness's key name
    line: str  # "— <name> base64(key ID || timestamp || signature)"


class MetaRow(SQLModel, table=True):
    __tablename__ = "audit_meta"

    key: str = Field(primary_key=True)
    value: str


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]  # set by SQLModel for table=True
    assert isinstance(table, Table)
    return table


RECORDS = _table(RecordRow)
SUBJECTS = _table(SubjectRow)
BLOCKS = _table(SubjectBlockRow)
HEAD = _table(HeadRow)
CHECKPOINTS = _table(CheckpointRow)
META = _table(MetaRow)
COSIGNATURES = _table(CosignatureRow)
TABLES = [RECORDS, SUBJECTS, BLOCKS, HEAD, CHECKPOINTS, META, COSIGNATURES]


class StoreError(Exception):
    """The store failed; the log turns this into ``AuditUnavailable``."""


#: The record fields the store keeps in columns beside the body, for its queries:
#: time, kind, request_id, client, purpose, upstream.
RecordColumns = tuple[str, str, str, str | None, str | None, str | None]


def record_columns(record: AnyRecord) -> RecordColumns:
    r = record
    return (r.time, r.kind, r.request_id, r.client, r.purpose, r.upstream)


@dataclass(slots=True)  # not frozen: a frozen __init__ cost 1.6 µs per record, this 0.4
class PreparedRecord:
    """A record ready for the writer: canonical bytes, their leaf hash, the columns.

    ``record`` may be absent when ``columns`` are given: the audit sequencer gets
    the bytes and columns from a worker and never decodes the record.
    """

    record: AnyRecord | None
    body: bytes
    leaf: bytes
    # Pseudonyms for the subject index (not in the record: format 2 names people
    # only by commitments). Format-1 records index their ``subjects``.
    index: tuple[str, ...] = ()
    columns: RecordColumns | None = None


@dataclass(frozen=True, slots=True)
class StoredRecord:
    seq: int
    time: str
    leaf_hash: bytes
    body: bytes


def subject_tag(pseudonym: str) -> int:
    """The 64-bit index key of a pseudonym (collisions are filtered on read).

    Pseudonyms ``hmac-sha256:<64 hex>`` are already uniform: their last 15 hex
    digits (60 bits) are the tag. Anything else is hashed first.
    """
    if len(pseudonym) == 76 and pseudonym.startswith("hmac-sha256:"):
        try:
            return int(pseudonym[-15:], 16)
        except ValueError:
            pass  # not hex after all: hash it like any other string
    digest = hashlib.sha256(pseudonym.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_HEAD = "SELECT size, frontier FROM audit_head WHERE id = 1"
_HEAD_FOR_UPDATE = _HEAD + " FOR UPDATE"
_SET_HEAD = "UPDATE audit_head SET size = ?, frontier = ? WHERE id = 1"
_SET_HEAD_PG = "UPDATE audit_head SET size = %s, frontier = %s WHERE id = 1"


def subject_key(pseudonym: str) -> bytes:
    """The 8 bytes a block stores for a pseudonym: :func:`subject_tag`, big-endian."""
    return subject_tag(pseudonym).to_bytes(8, "big", signed=True)


def block_seqs(first_seq: int, refs: bytes, keys: Sequence[bytes]) -> set[int]:
    """The seqs a block's ``refs`` give for any of ``keys`` (aligned matches only)."""
    found: set[int] = set()
    for key in keys:
        at = refs.find(key)
        while at >= 0:
            if at % REF_SIZE == 0:
                found.add(first_seq + int.from_bytes(refs[at + 8 : at + REF_SIZE], "big"))
            at = refs.find(key, at + 1)
    return found


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no extension
_COPY_TRAILER = b"\xff\xff"
_COPY_NULL = b"\xff\xff\xff\xff"
_COPY_LENGTH = struct.Struct(">i")
_COPY_COUNT = struct.Struct(">h")
_COPY_INT8 = struct.Struct(">iq")


def binary_copy(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """``rows`` in PostgreSQL's binary COPY format, signature to trailer.

    A value is sent as what the column holds: ``int`` as an 8-byte ``bigint``
    (every integer column the log writes is one), ``str`` as UTF-8 text,
    ``bytes`` as ``bytea``, ``None`` as NULL. Anything else raises ``TypeError``
    before a byte is sent.
    """
    out = [_COPY_SIGNATURE]
    append = out.append
    length, int8 = _COPY_LENGTH.pack, _COPY_INT8.pack
    for row in rows:
        append(_COPY_COUNT.pack(len(row)))
        for value in row:
            kind = type(value)  # exact types first: this loop runs per column per record
            if kind is str:
                value = value.encode()
            elif kind is int:  # not bool, which is an int too
                append(int8(8, value))
                continue
            elif value is None:
                append(_COPY_NULL)
                continue
            elif kind is not bytes:
                value = _copy_bytes(value)
            append(length(len(value)))
            append(value)
    append(_COPY_TRAILER)
    return b"".join(out)


def _copy_bytes(value: object) -> bytes:
    """The bytes binary COPY sends for a ``str`` or bytes-like subclass; else ``TypeError``."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"no binary COPY encoding for {type(value).__name__}")


def database_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg 3 (``postgresql://`` would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": 10},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin (SQLAlchemy's
        # documented recipe), so the writer can take the write lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is durable when it returns; with group commit the fsync
        # is shared by the whole batch (reference/performance.md: 5-8 us/row).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get("audit_writer") else "BEGIN"
        )

    return engine


class AuditStore:
    """Tables and queries of one audit log; thread-safe through the engine's pool."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._writer: Connection | None = None
        self._origin: str | None = None
        self._insert_sql: dict[tuple[str, int], str] = {}
        # SQLite: the write-ahead log the writer's commits go to, synced by sync().
        self._wal: Path | None = None
        self._wal_fd: int | None = None
        if not self._postgres and engine.url.database:
            self._wal = Path(engine.url.database + "-wal")
        # The driver's own exception base (sqlite3.Error, psycopg.Error): the writer
        # talks to the driver directly.
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error

    @classmethod
    def open(
        cls,
        *,
        data_dir: Path | None = None,
        url: str | None = None,
        schema: str | None = None,
    ) -> AuditStore:
        """SQLite ``<data_dir>/audit.db`` unless ``url`` names another database.

        ``schema`` (PostgreSQL only) puts the tables in that schema via
        ``search_path``; tests use it to isolate themselves.
        """
        if url:
            connect_args: dict[str, Any] = {}
            if schema:
                connect_args["options"] = f"-c search_path={schema}"
            engine = create_engine(database_url(url), connect_args=connect_args, pool_pre_ping=True)
        elif data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            engine = _sqlite_engine(data_dir / SQLITE_FILE)
        else:
            raise ValueError("an audit store needs a data directory or a database URL")
        store = cls(engine)
        store.create()
        return store

    def create(self) -> None:
        """Create missing tables, the head row and the origin (idempotent, replica-safe)."""
        try:
            # audit_writer: on SQLite, BEGIN IMMEDIATE. A second process starting at the
            # same time then waits (busy timeout) for the write lock, instead of failing
            # with "database is locked" when its read transaction tries to upgrade.
            with (
                self.engine.connect().execution_options(audit_writer=True) as conn,
                conn.begin(),
            ):
                if self._postgres:
                    # Replicas starting together would race on CREATE TABLE (pg_type's
                    # unique index); one transaction-scoped lock lets them take turns.
                    conn.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
                SQLModel.metadata.create_all(conn, tables=TABLES)
                if conn.execute(select(HEAD.c.size)).first() is None:
                    self._insert_ignoring_conflict(
                        conn, HEAD, {"id": 1, "size": 0, "frontier": b""}
                    )
                if conn.execute(select(META.c.value).where(META.c.key == "origin")).first() is None:
                    origin = f"score-gateway/audit/{uuid.uuid4().hex}"
                    self._insert_ignoring_conflict(conn, META, {"key": "origin", "value": origin})
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prepare the audit store: {exc.__class__.__name__}") from exc

    def _insert_ignoring_conflict(
        self, conn: Connection, table: Table, row: dict[str, Any]
    ) -> None:
        # Another replica may have created it first; the savepoint undoes only this insert.
        with contextlib.suppress(IntegrityError), conn.begin_nested():
            conn.execute(insert(table), row)

    @property
    def origin(self) -> str:
        if self._origin is None:
            with self.engine.connect() as conn:
                value = conn.execute(
                    select(META.c.value).where(META.c.key == "origin")
                ).scalar_one()
            self._origin = str(value)
        return self._origin

    def close(self) -> None:
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.dispose()

    # -- the writer (one thread) ---------------------------------------------------

    @property
    def syncs_separately(self) -> bool:
        """Whether a committed batch is durable only after :meth:`sync` (SQLite)."""
        return self._wal is not None

    def _writer_connection(self) -> Connection:
        if self._writer is None:
            self._writer = self.engine.connect().execution_options(audit_writer=True)
            if not self._postgres:
                dbapi = self._writer.connection.dbapi_connection
                assert dbapi is not None
                cursor = dbapi.cursor()
                # The writer's commits do not wait for the disk: the log's syncer
                # thread fsyncs the write-ahead log after them, once for every batch
                # committed meanwhile, and only then are their records acknowledged
                # (sync()). The next batch commits while the last one is synced.
                cursor.execute("PRAGMA synchronous=NORMAL")
                # Appends touch the right edge of each b-tree: little page cache helps.
                cursor.execute("PRAGMA cache_size=-8192")
                cursor.close()
        return self._writer

    def sync(self) -> None:
        """Make every batch committed so far durable: fsync SQLite's write-ahead log
        (what ``synchronous=FULL`` does inside each commit). PostgreSQL's commits are
        durable when they return. Raises :class:`StoreError`."""
        wal = self._wal
        if wal is None:
            return
        try:
            fd = self._wal_fd
            if fd is None or os.fstat(fd).st_ino != os.stat(wal).st_ino:
                # First sync, or SQLite made a new log file: sync the directory entry too.
                if fd is not None:
                    os.close(fd)
                self._wal_fd = None
                fd = os.open(wal, os.O_RDONLY)
                self._wal_fd = fd
                directory = os.open(wal.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
            os.fsync(fd)
        except OSError as exc:
            raise StoreError(f"cannot sync the audit log to disk: {exc}") from exc

    def append_batch(
        self, batch: Sequence[PreparedRecord], frontier: Frontier
    ) -> tuple[int, Frontier]:
        """Commit ``batch`` as the next leaves; return the first ``seq`` and the new frontier.

        ``frontier`` is not modified. On any failure nothing is committed and
        :class:`StoreError` is raised; the writer connection is discarded.

        The batch goes to the driver directly, five statements and a commit, with
        no SQLAlchemy in between: each driver call releases and re-takes the GIL,
        which the event loop holds most of the time, and SQLAlchemy's statement
        building cost ~350 µs of CPU per commit here against ~25 µs for the
        driver's own work (``bench/README.md``).
        """
        try:
            conn = self._writer_connection()
            driver = conn.connection.driver_connection
            assert driver is not None
            cursor = driver.cursor()
            try:
                if self._postgres:  # psycopg opens the transaction with the first statement
                    cursor.execute(_HEAD_FOR_UPDATE)
                else:  # the write lock now, not at the first insert (another process may hold it)
                    cursor.execute("BEGIN IMMEDIATE")
                    cursor.execute(_HEAD)
                size, packed = cursor.fetchone()
                base = frontier if size == frontier.size else Frontier.unpack(size, bytes(packed))
                new = base.copy()
                first = new.size
                rows: list[tuple[Any, ...]] = []
                refs = bytearray()
                for item in batch:
                    seq = new.size
                    new.append(item.leaf)
                    r = item.record
                    columns = item.columns
                    if columns is None:
                        assert r is not None
                        columns = record_columns(r)
                    rows.append((seq, *columns, item.leaf, item.body))
                    index = item.index or (record_subjects(r) if r is not None else ())
                    if index:
                        offset = (seq - first).to_bytes(4, "big")
                        for key in {subject_key(p) for p in index}:
                            refs += key
                            refs += offset
                self._insert(cursor, RECORDS, RECORD_COLUMNS, rows)
                if refs:
                    self._insert(cursor, BLOCKS, BLOCK_COLUMNS, [(first, new.size, bytes(refs))])
                cursor.execute(
                    _SET_HEAD_PG if self._postgres else _SET_HEAD, (new.size, new.packed())
                )
                if self._postgres:
                    driver.commit()
                else:
                    cursor.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    if self._postgres:
                        driver.rollback()
                    else:
                        cursor.execute("ROLLBACK")
                raise
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        except (SQLAlchemyError, OSError, self._driver_error) as exc:
            self._discard_writer()
            raise StoreError(f"audit append failed: {exc.__class__.__name__}: {exc}") from exc
        return first, new

    def _insert(
        self, cursor: Any, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        """Insert ``rows`` on the writer's driver ``cursor``, in as few statements as fit.

        The values are already plain str/int/bytes, so they go to the driver as they
        are: SQLAlchemy's per-row parameter processing cost ~8 us/row, more than
        SQLite's own insert.
        """
        if self._postgres:
            # COPY on the same connection, inside the same transaction. psycopg's
            # executemany (pipelined single-row INSERTs) and multi-row INSERTs (its
            # parser re-splits the long text every time) both measured ~5k rows/s here;
            # write_row() per row spent more in psycopg than the binary payload costs.
            payload = binary_copy(rows)
            names = ", ".join(columns)
            with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(payload)
            return
        # Multi-row INSERTs of power-of-two sizes, so the few distinct statements stay
        # in the driver's prepared-statement cache: preparing a 512-row INSERT costs
        # ~3 ms, seven times executing it.
        largest = 1 << ((MAX_PARAMETERS // len(columns)).bit_length() - 1)
        start = 0
        while start < len(rows):
            size = min(largest, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start : start + size]
            start += size
            key = (table.name, len(chunk))
            sql = self._insert_sql.get(key)
            if sql is None:
                one = "(" + ", ".join(["?"] * len(columns)) + ")"
                # Names come from our own table metadata, values are bound parameters.
                values = ", ".join([one] * len(chunk))
                sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {values}"  # noqa: S608
                self._insert_sql[key] = sql
            cursor.execute(sql, tuple(itertools.chain.from_iterable(chunk)))

    def _discard_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.invalidate()
                self._writer.close()
            except SQLAlchemyError:
                pass
            self._writer = None

    def ping(self) -> None:
        """Prove the store takes writes: a committed no-op update of the head row on
        the writer's connection. A read would succeed on a full disk or a read-only
        file, and readiness must not turn green while appends still fail.
        Raises :class:`StoreError` if it fails."""
        try:
            conn = self._writer_connection()
            with conn.begin():
                conn.execute(update(HEAD).values(size=HEAD.c.size))
        except (SQLAlchemyError, OSError) as exc:
            self._discard_writer()
            raise StoreError(f"audit store unreachable: {exc.__class__.__name__}") from exc

    # -- head and checkpoints ------------------------------------------------------

    def head(self) -> Frontier:
        with self.engine.connect() as conn:
            size, packed = conn.execute(select(HEAD.c.size, HEAD.c.frontier)).one()
        return Frontier.unpack(size, packed)

    def add_checkpoint(self, checkpoint: Checkpoint, frontier: Frontier) -> bool:
        """Store a checkpoint; False if one already exists for that size."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(CHECKPOINTS),
                    {
                        "size": checkpoint.size,
                        "origin": checkpoint.origin,
                        "root": checkpoint.root,
                        "time": checkpoint.time,
                        "key_id": checkpoint.key_id,
                        "signature": checkpoint.signature,
                        "frontier": frontier.packed(),
                    },
                )
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store a checkpoint: {exc.__class__.__name__}") from exc
        return True

    def latest_checkpoint(self) -> tuple[Checkpoint, Frontier] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(CHECKPOINTS).order_by(CHECKPOINTS.c.size.desc()).limit(1)
            ).first()
        if row is None:
            return None
        return _checkpoint(row), Frontier.unpack(row.size, row.frontier)

    def checkpoint_at(self, size: int) -> Checkpoint | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.size == size)).first()
        return None if row is None else _checkpoint(row)

    def iter_checkpoints(self, begin: int, end: int) -> Iterator[Checkpoint]:
        """Checkpoints with ``begin <= size <= end``, by size, in chunks."""
        low = begin
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(CHECKPOINTS)
                    .where(CHECKPOINTS.c.size >= low, CHECKPOINTS.c.size <= end)
                    .order_by(CHECKPOINTS.c.size)
                    .limit(READ_CHUNK)
                ).all()
            for row in rows:
                yield _checkpoint(row)
            if len(rows) < READ_CHUNK:
                return
            low = rows[-1].size + 1

    # -- retention -------------------------------------------------------------------

    def pruned_until(self) -> int:
        """Records below this seq may have had their bodies dropped (0: none pruned)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(META.c.value).where(META.c.key == "pruned_until")
            ).scalar_one_or_none()
        return 0 if value is None else int(value)

    def first_seq_since(self, begin: int, cutoff: str) -> int:
        """The first seq at or after ``begin`` whose record time is ``>= cutoff`` (or the size)."""
        with self.engine.connect() as conn:
            seq = conn.execute(
                select(RECORDS.c.seq)
                .where(RECORDS.c.seq >= begin, RECORDS.c.time >= cutoff)
                .order_by(RECORDS.c.seq)
                .limit(1)
            ).scalar_one_or_none()
            if seq is not None:
                return int(seq)
            return int(conn.execute(select(HEAD.c.size)).scalar_one())

    def prune(self, begin: int, end: int) -> int:
        """Drop the bodies of records ``[begin, end)`` but ``audit.prune`` ones, keep their
        leaf hashes, forget them in the subject index; return how many were dropped."""
        try:
            with self.engine.begin() as conn:
                dropped = conn.execute(
                    update(RECORDS)
                    .where(
                        RECORDS.c.seq >= begin,
                        RECORDS.c.seq < end,
                        RECORDS.c.kind != "audit.prune",
                        RECORDS.c.body != b"",
                    )
                    .values(body=b"", client=None, purpose=None, upstream=None)
                ).rowcount
                conn.execute(SUBJECTS.delete().where(SUBJECTS.c.seq >= begin, SUBJECTS.c.seq < end))
                self._prune_blocks(conn, begin, end)
                done = conn.execute(
                    update(META).where(META.c.key == "pruned_until").values(value=str(end))
                ).rowcount
                if not done:
                    conn.execute(insert(META), {"key": "pruned_until", "value": str(end)})
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prune: {exc.__class__.__name__}") from exc
        return int(dropped)

    def _prune_blocks(self, conn: Connection, begin: int, end: int) -> None:
        """Forget ``[begin, end)`` in the block index: whole blocks go, blocks that
        straddle an edge keep only their references outside the range."""
        conn.execute(BLOCKS.delete().where(BLOCKS.c.first_seq >= begin, BLOCKS.c.end_seq <= end))
        edges = conn.execute(
            select(BLOCKS.c.first_seq, BLOCKS.c.refs).where(
                BLOCKS.c.first_seq < end, BLOCKS.c.end_seq > begin
            )
        ).all()
        for first, refs in edges:
            refs = bytes(refs)
            kept = b"".join(
                refs[at : at + REF_SIZE]
                for at in range(0, len(refs), REF_SIZE)
                if not begin <= first + int.from_bytes(refs[at + 8 : at + REF_SIZE], "big") < end
            )
            conn.execute(update(BLOCKS).where(BLOCKS.c.first_seq == first).values(refs=kept))

    # -- witness cosignatures ------------------------------------------------------

    def add_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keep a witness's cosignature of the checkpoint at ``size`` (the first one stays)."""
        try:
            with self.engine.begin() as conn:
                self._insert_ignoring_conflict(
                    conn, COSIGNATURES, {"size": size, "witness": witness, "line": line}
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store a cosignature: {exc.__class__.__name__}") from exc

    def cosignatures(self, begin: int, end: int) -> dict[int, list[str]]:
        """Cosignature lines of the checkpoints with ``begin <= size <= end``, by size."""
        out: dict[int, list[str]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(COSIGNATURES.c.size, COSIGNATURES.c.line)
                .where(COSIGNATURES.c.size >= begin, COSIGNATURES.c.size <= end)
                .order_by(COSIGNATURES.c.size, COSIGNATURES.c.witness)
            ).all()
        for size, line in rows:
            out.setdefault(int(size), []).append(str(line))
        return out

    def last_cosigned_size(self, witness: str) -> int:
        """The largest checkpoint size ``witness`` has cosigned for this store (0 if none)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(COSIGNATURES.c.size)
                .where(COSIGNATURES.c.witness == witness)
                .order_by(COSIGNATURES.c.size.desc())
                .limit(1)
            ).scalar_one_or_none()
        return 0 if value is None else int(value)

    def latest_cosigned_checkpoint(self) -> Checkpoint | None:
        """The largest checkpoint that carries at least one cosignature."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(CHECKPOINTS)
                .where(CHECKPOINTS.c.size.in_(select(COSIGNATURES.c.size)))
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
        return None if row is None else _checkpoint(row)

    # -- reads -------------------------------------------------------------------------

    def iter_records(
        self, begin: int, end: int, *, chunk: int = READ_CHUNK
    ) -> Iterator[StoredRecord]:
        """Rows with ``begin <= seq < end`` by seq, in keyset-paginated chunks (constant memory)."""
        low = begin
        columns = (RECORDS.c.seq, RECORDS.c.time, RECORDS.c.leaf_hash, RECORDS.c.body)
        while low < end:
            high = min(end, low + chunk)
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(*columns)
                    .where(RECORDS.c.seq >= low, RECORDS.c.seq < high)
                    .order_by(RECORDS.c.seq)
                ).all()
            for seq, time, leaf, body in rows:
                yield StoredRecord(seq, time, bytes(leaf), bytes(body))
            low = high

    def subject_records(
        self, pseudonyms: Sequence[str], *, upstream: str | None = None
    ) -> Iterator[StoredRecord]:
        """Every record whose index entry matches one of ``pseudonyms``, by seq.

        The block index is scanned in the database (C code), and only the blocks
        holding one of the tags come back to Python; the caller confirms each record
        against its body (tags are 64 bits, and may collide)."""
        if not pseudonyms:
            return
        keys = [subject_key(p) for p in pseudonyms]
        find = "position(:k{0} IN refs) > 0" if self._postgres else "instr(refs, :k{0}) > 0"
        where = " OR ".join(find.format(i) for i in range(len(keys)))
        scan = text(f"SELECT first_seq, refs FROM audit_subject_block WHERE {where}")  # noqa: S608
        seqs: set[int] = set()
        with self.engine.connect() as conn:
            params = {f"k{i}": key for i, key in enumerate(keys)}
            for first, refs in conn.execution_options(yield_per=READ_CHUNK).execute(scan, params):
                seqs |= block_seqs(first, bytes(refs), keys)
            # Rows of the per-reference index written by earlier releases.
            legacy = select(SUBJECTS.c.seq).where(
                SUBJECTS.c.tag.in_([subject_tag(p) for p in pseudonyms])
            )
            seqs.update(seq for (seq,) in conn.execute(legacy))
        ordered = sorted(seqs)
        columns = (RECORDS.c.seq, RECORDS.c.time, RECORDS.c.leaf_hash, RECORDS.c.body)
        for start in range(0, len(ordered), READ_CHUNK):
            query = (
                select(*columns)
                .where(RECORDS.c.seq.in_(ordered[start : start + READ_CHUNK]))
                .order_by(RECORDS.c.seq)
            )
            if upstream is not None:
                query = query.where(RECORDS.c.upstream == upstream)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            for seq, time, leaf, body in rows:
                yield StoredRecord(seq, time, bytes(leaf), bytes(body))

    def iter_leaf_hashes(self, begin: int, end: int, *, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """Leaf hashes of ``begin <= seq < end`` in order (proofs read only this column)."""
        low = begin
        while low < end:
            high = min(end, low + chunk)
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(RECORDS.c.seq, RECORDS.c.leaf_hash)
                    .where(RECORDS.c.seq >= low, RECORDS.c.seq < high)
                    .order_by(RECORDS.c.seq)
                ).all()
            expected = low
            for seq, leaf in rows:
                if seq != expected:
                    raise StoreError(f"record seq {expected} is missing from the store")
                expected += 1
                yield bytes(leaf)
            if expected != high:
                raise StoreError(f"record seq {expected} is missing from the store")
            low = high

    def frontier_at(self, size: int) -> Frontier | None:
        """The frontier stored with the checkpoint of this size, if there is one."""
        with self.engine.connect() as conn:
            packed = conn.execute(
                select(CHECKPOINTS.c.frontier).where(CHECKPOINTS.c.size == size)
            ).scalar_one_or_none()
        return None if packed is None else Frontier.unpack(size, bytes(packed))

    def has_record(self, request_id: str, kind: str, since: int) -> bool:
        """Whether a record of ``kind`` for ``request_id`` is committed at ``seq >=
        since``: a scan of the log's tail only (``seq`` is the primary key)."""
        query = (
            select(RECORDS.c.seq)
            .where(RECORDS.c.seq >= since)
            .where(RECORDS.c.request_id == request_id)
            .where(RECORDS.c.kind == kind)
            .limit(1)
        )
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).first() is not None
        except SQLAlchemyError as exc:
            raise StoreError(f"audit read failed: {exc.__class__.__name__}") from exc

    def count_records(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM audit_record")).scalar_one())


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        origin=row.origin,
        size=row.size,
        root=row.root,
        time=row.time,
        key_id=row.key_id,
        signature=row.signature,
    )
