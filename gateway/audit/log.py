"""The audit log: append fails closed, group commit in one writer thread, signed checkpoints.

Flow of one record::

    append(record)            event loop: put (record, future) on a queue; await the future
      -> writer thread        takes up to ``max_batch`` queued records, encodes them
                              canonically, hashes the leaves, commits them in ONE
                              transaction (group commit), then resolves every future of
                              the batch with one ``loop.call_soon_threadsafe``
      -> syncer thread        (SQLite) fsyncs the write-ahead log once for every batch
                              committed since its last fsync, then resolves them; the
                              writer commits the next batch meanwhile
      <- seq                  only after the commit (and the fsync) returned: the
                              record is durable

No log, no lookup: if the store fails, every future of the failed batch gets
:class:`gateway.errors.AuditUnavailable`; nothing is dropped and no ``seq`` is
invented. The in-memory Merkle frontier only advances when a batch commits, and
the store re-checks it against the head row on every batch, so the next batch
continues from the last *committed* leaf. While the store is failing the writer
probes it every ``checkpoint_interval``; :meth:`AuditLog.healthy` (``/readyz``)
reports the result.

Checkpoints (:mod:`gateway.audit.checkpoint`) are signed in the writer thread,
never per record: at most one per ``checkpoint_interval`` while records flow, one
on demand (:meth:`checkpoint`, used by export) and one at :meth:`close`. A tree
size that already has a checkpoint is not signed again.

Recovery (:meth:`start`): the head row and the records are committed together, so
a ``kill -9`` at any moment leaves a consistent prefix. Start-up still checks it:
from the last checkpoint (signature with a known key, stored frontier against the
signed root), every later row must have the next ``seq`` and ``leaf_hash ==
SHA-256(0x00 || body)``, and the rebuilt frontier must equal the head row.
Anything else raises :class:`AuditIntegrityError` and the gateway refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.audit.merkle import Frontier, leaf_hash
from gateway.audit.record import AnyRecord, canonical_bytes
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore, PreparedRecord, RecordColumns, StoreError
from gateway.errors import AuditUnavailable, GatewayError

logger = logging.getLogger(__name__)


class AuditIntegrityError(GatewayError):
    """The stored log does not match its own checkpoints or head: refuse to start."""

    status, title, code = 500, "Audit log inconsistent", "audit.integrity"


@dataclass(slots=True)
class AuditStats:
    """Numbers for metrics; read without locking (single-writer, monotonic fields)."""

    queue_depth: int = 0
    last_commit_latency: float = 0.0  # seconds, of the last committed batch
    last_batch_size: int = 0
    commits: int = 0
    records: int = 0
    failed_batches: int = 0
    checkpoints: int = 0


T = TypeVar("T")


class Sink(Protocol):
    """Where a record's ``seq`` (or its failure) goes, on the event loop: an
    ``asyncio.Future[int]``, or the sequencer's acknowledgement to a worker, which
    needs no future, task or callback of its own per record."""

    def get_loop(self) -> asyncio.AbstractEventLoop: ...

    def done(self) -> bool: ...

    def set_result(self, result: int, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


_CheckpointFuture = asyncio.Future[Checkpoint]


class _CheckpointRequest:
    __slots__ = ("future",)

    def __init__(self, future: _CheckpointFuture) -> None:
        self.future = future


class _Stop:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future


# (record, or its canonical bytes and store columns from a worker; index; future)
_Entry = tuple[AnyRecord | bytes, RecordColumns | None, tuple[str, ...], Sink]
_Item = _Entry | _CheckpointRequest | _Stop


def recover(store: AuditStore, keyring: KeyRing) -> Frontier:
    """Check the tail since the last checkpoint against the stored leaves and head."""
    try:
        head = store.head()
        latest = store.latest_checkpoint()
    except ValueError as exc:  # a packed frontier of the wrong length
        raise AuditIntegrityError(f"the stored head or checkpoint is malformed: {exc}") from None
    if latest is None:
        frontier = Frontier()
    else:
        checkpoint, frontier = latest
        if checkpoint.origin != store.origin:
            raise AuditIntegrityError(
                f"checkpoint at size {checkpoint.size} names origin {checkpoint.origin!r}, "
                f"not this log's {store.origin!r}"
            )
        key = keyring.public_keys.get(checkpoint.key_id)
        # A checkpoint by another replica's key is checked by root only.
        if key is not None and not checkpoint.verify(key):
            raise AuditIntegrityError(f"checkpoint at size {checkpoint.size} has a bad signature")
        if frontier.root() != checkpoint.root_hash:
            raise AuditIntegrityError(
                f"the stored frontier at size {checkpoint.size} does not match its checkpoint"
            )
        if checkpoint.size > head.size:
            raise AuditIntegrityError(
                f"checkpoint at size {checkpoint.size} is beyond the head at size {head.size}"
            )
    pruned_until = store.pruned_until()
    for row in store.iter_records(frontier.size, head.size):
        if row.seq != frontier.size:
            raise AuditIntegrityError(f"record seq {frontier.size} is missing (found {row.seq})")
        pruned = not row.body and row.seq < pruned_until  # retention dropped it, kept its hash
        if not pruned and leaf_hash(row.body) != row.leaf_hash:
            raise AuditIntegrityError(f"record seq {row.seq}: leaf hash does not match its body")
        frontier.append(row.leaf_hash)
    if frontier.size != head.size or frontier.packed() != head.packed():
        raise AuditIntegrityError(
            f"the stored records (size {frontier.size}) do not match the head (size {head.size})"
        )
    return frontier


class AuditLog:
    """Append-only, fail-closed audit log over an :class:`AuditStore`."""

    def __init__(
        self,
        store: AuditStore,
        keyring: KeyRing,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 512,
        checkpoint_interval: float = 1.0,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
    ) -> None:
        """``on_checkpoint`` is called from the writer thread after each new checkpoint is
        stored (the witness pusher wakes on it); it must not block."""
        self._store = store
        self._on_checkpoint = on_checkpoint
        self._keyring = keyring
        self._clock = clock
        self._max_batch = max_batch
        self._interval = checkpoint_interval
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._frontier = Frontier()
        self._thread: threading.Thread | None = None
        # SQLite: committed batches wait here for the syncer thread's fsync.
        self._unsynced: queue.SimpleQueue[tuple[list[Sink], int] | None] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None
        self._accepting = False
        self._store_ok = False
        self._last_checkpoint_size = -1
        self._last_checkpoint: Checkpoint | None = None
        self._last_checkpoint_at = 0.0
        self._stats = AuditStats()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Verify the stored tail, rebuild the frontier, start the writer."""
        if self._thread is not None:
            raise RuntimeError("the audit log is already started")
        try:
            self._frontier = await asyncio.to_thread(recover, self._store, self._keyring)
            latest = await asyncio.to_thread(self._store.latest_checkpoint)
        except (StoreError, SQLAlchemyError) as exc:
            raise AuditUnavailable("the audit store cannot be read at start-up") from exc
        if latest is not None:
            self._last_checkpoint, _ = latest
            self._last_checkpoint_size = self._last_checkpoint.size
        self._store_ok = True
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        if self._store.syncs_separately:
            self._syncer = threading.Thread(target=self._sync, name="audit-syncer", daemon=True)
            self._syncer.start()
        self._thread.start()
        # Records a crashed run committed after its last checkpoint get one now.
        if self._frontier.size != self._last_checkpoint_size:
            await self.checkpoint()

    async def close(self) -> None:
        """Commit what is queued, sign a final checkpoint, stop the writer."""
        if self._thread is None or not self._accepting:
            return
        self._accepting = False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(_Stop(done))
        await done
        await asyncio.to_thread(self._thread.join)
        if self._syncer is not None:
            await asyncio.to_thread(self._syncer.join)
        # An append that raced with close() and missed the writer's drain.
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if isinstance(item, tuple):
                    _fail(item[3], AuditUnavailable("the audit log is closed"))
                elif isinstance(item, _CheckpointRequest):
                    _fail(item.future, AuditUnavailable("the audit log is closed"))

    def healthy(self) -> bool:
        """Ready to take records: started, writer (and syncer) alive, last store
        contact succeeded."""
        thread, syncer = self._thread, self._syncer
        alive = thread is not None and thread.is_alive()
        if syncer is not None:
            alive = alive and syncer.is_alive()
        return self._accepting and self._store_ok and alive

    @property
    def stats(self) -> AuditStats:
        self._stats.queue_depth = self._queue.qsize()
        return self._stats

    @property
    def size(self) -> int:
        """Committed records (the writer's view)."""
        return self._frontier.size

    # -- appends and checkpoints -------------------------------------------------------

    async def append(self, record: AnyRecord, index: Sequence[str] = ()) -> int:
        """Durably append ``record``; return its ``seq``. Raises ``AuditUnavailable``.

        ``index``: pseudonyms of the people the record concerns, for the store's
        subject index (format-2 records name them only by commitments).
        """
        if not self._accepting:
            raise AuditUnavailable("the audit log is not running")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put((record, None, tuple(index), future))
        return await future

    def submit_encoded(
        self, body: bytes, columns: RecordColumns, index: Sequence[str], sink: Sink
    ) -> None:
        """Queue a record's canonical bytes, made by a worker, with its store columns.

        ``sink`` gets its ``seq`` once committed, or ``AuditUnavailable``, on the
        event loop. Not a coroutine, and no decoding: the sequencer queues a whole
        read's worth of frames without a task or a parse per record.
        """
        if not self._accepting:
            raise AuditUnavailable("the audit log is not running")
        self._queue.put((body, columns, tuple(index), sink))

    async def checkpoint(self) -> Checkpoint:
        """A signed checkpoint of everything committed before this call returns."""
        if not self._accepting:
            raise AuditUnavailable("the audit log is not running")
        future: _CheckpointFuture = asyncio.get_running_loop().create_future()
        self._queue.put(_CheckpointRequest(future))
        return await future

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        stop: _Stop | None = None
        while stop is None:
            batch: list[_Entry] = []
            requests: list[_CheckpointRequest] = []
            timeout = max(0.0, self._last_checkpoint_at + self._interval - self._clock())
            try:
                item = self._queue.get(timeout=timeout if timeout > 0 else self._interval)
            except queue.Empty:
                item = None
            while item is not None:
                if isinstance(item, tuple):
                    batch.append(item)
                elif isinstance(item, _CheckpointRequest):
                    requests.append(item)
                else:
                    stop = item
                if len(batch) >= self._max_batch or requests or stop is not None:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch:
                self._commit(batch)
            elif not self._store_ok:
                self._probe()
            if stop is not None:
                self._drain_after_stop()
            due = self._clock() - self._last_checkpoint_at >= self._interval
            if requests or stop is not None or due:
                self._checkpoint(requests)
        assert stop is not None
        if self._syncer is not None:
            self._unsynced.put(None)  # after every batch: the syncer syncs them, then ends
        _resolve(stop.future, None)

    # -- the syncer thread (SQLite) -------------------------------------------------------

    def _sync(self) -> None:
        """Acknowledge committed batches once they are on disk: one fsync of the
        write-ahead log for every batch committed since the last one. The writer
        commits the next batch meanwhile, instead of waiting for the disk."""
        done = False
        while not done:
            batches = [self._unsynced.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batches.append(self._unsynced.get_nowait())
            done = batches[-1] is None
            ready = [b for b in batches if b is not None]
            if not ready:
                continue
            try:
                self._store.sync()
            except Exception as exc:  # the records are committed, but not known durable
                if not isinstance(exc, StoreError):
                    logger.exception("unexpected error while syncing the audit log")
                self._store_ok = False
                error = AuditUnavailable("the audit store cannot make records durable")
                error.__cause__ = exc
                for futures, _ in ready:
                    _fail_all(futures, error)
                continue
            for futures, first in ready:
                _resolve_seqs(futures, first)

    def _drain_after_stop(self) -> None:
        """Appends queued before ``close`` are committed, never dropped."""
        while True:
            batch: list[_Entry] = []
            with contextlib.suppress(queue.Empty):
                while len(batch) < self._max_batch:
                    item = self._queue.get_nowait()
                    if isinstance(item, tuple):
                        batch.append(item)
                    elif isinstance(item, _CheckpointRequest):
                        _fail(item.future, AuditUnavailable("the audit log is closing"))
            if not batch:
                return
            self._commit(batch)

    def _commit(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        prepared: list[PreparedRecord] = []
        futures: list[Sink] = []
        for item, columns, index, future in batch:
            if isinstance(item, bytes):  # from a worker, through the sequencer
                prepared.append(PreparedRecord(None, item, leaf_hash(item), index, columns))
                futures.append(future)
                continue
            try:
                body = canonical_bytes(item)
            except (msgspec.EncodeError, TypeError, ValueError):
                _fail(future, AuditUnavailable("the audit record cannot be encoded"))
                continue
            prepared.append(PreparedRecord(item, body, leaf_hash(body), index))
            futures.append(future)
        if not prepared:
            return
        try:
            first, frontier = self._store.append_batch(prepared, self._frontier)
        except Exception as exc:
            # StoreError is the expected case; anything else must not kill the
            # writer either (every later append would hang): fail this batch closed.
            if not isinstance(exc, StoreError):
                logger.exception("unexpected error in the audit writer")
            self._store_ok = False
            self._stats.failed_batches += 1
            error = AuditUnavailable("the audit store cannot take records")
            error.__cause__ = exc
            _fail_all(futures, error)
            return
        self._frontier = frontier
        self._store_ok = True
        stats = self._stats
        stats.last_commit_latency = time.perf_counter() - started
        stats.last_batch_size = len(futures)
        stats.commits += 1
        stats.records += len(futures)
        if self._syncer is not None:
            self._unsynced.put((futures, first))  # acknowledged once on disk
        else:
            _resolve_seqs(futures, first)

    def _probe(self) -> None:
        try:
            self._store.ping()
        except StoreError:
            self._store_ok = False
            return
        self._store_ok = True

    def _checkpoint(self, requests: list[_CheckpointRequest]) -> None:
        self._last_checkpoint_at = self._clock()
        frontier = self._frontier
        try:
            checkpoint = self._last_checkpoint
            if checkpoint is None or frontier.size != self._last_checkpoint_size:
                checkpoint = sign_checkpoint(
                    self._keyring,
                    origin=self._store.origin,
                    size=frontier.size,
                    root=frontier.root(),
                    timestamp=self._clock(),
                )
                if not self._store.add_checkpoint(checkpoint, frontier):
                    # Another replica (or an export) signed this size first: use theirs.
                    checkpoint = self._store.checkpoint_at(frontier.size) or checkpoint
                self._last_checkpoint = checkpoint
                self._last_checkpoint_size = frontier.size
                self._stats.checkpoints += 1
                if self._on_checkpoint is not None:
                    self._on_checkpoint(checkpoint)
        except Exception as exc:  # same reasoning as in _commit: the writer must survive
            if not isinstance(exc, (StoreError, SQLAlchemyError)):
                logger.exception("unexpected error while signing a checkpoint")
            self._store_ok = False
            error = AuditUnavailable("cannot store a checkpoint")
            error.__cause__ = exc
            for request in requests:
                _fail(request.future, error)
            return
        for request in requests:
            _resolve(request.future, checkpoint)


# -- handing results back to the event loop: one call_soon_threadsafe per batch -------


def _resolve_seqs(futures: list[Sink], first: int) -> None:
    loop = futures[0].get_loop()
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(_set_seqs, futures, first)


def _set_seqs(futures: list[Sink], first: int) -> None:
    for offset, future in enumerate(futures):
        if not future.done():  # a cancelled caller; its record is committed all the same
            future.set_result(first + offset)


def _fail_all(futures: list[Sink], error: AuditUnavailable) -> None:
    loop = futures[0].get_loop()
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_set_errors, futures, error)


def _set_errors(futures: list[Sink], error: AuditUnavailable) -> None:
    for future in futures:
        if not future.done():
            # One exception object per caller: they are raised in different tasks.
            each = AuditUnavailable(error.detail)
            each.__cause__ = error.__cause__
            future.set_exception(each)


def _resolve(future: asyncio.Future[T], value: T) -> None:
    def _set() -> None:
        if not future.done():
            future.set_result(value)

    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(_set)


def _fail(future: asyncio.Future[Any] | Sink, error: BaseException) -> None:
    def _set() -> None:
        if not future.done():
            future.set_exception(error)

    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(_set)
