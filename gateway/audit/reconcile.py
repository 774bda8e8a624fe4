"""Close lookups whose outcome was never recorded.

A ``lookup.intent`` is committed before the upstream is called and the ``lookup``
outcome before the caller is answered. When the outcome cannot be committed (the
store failed in between, or the process was killed), the caller got no score, and
the log must say so rather than keep a lookup open forever (reliability.md
catalogue 2 #10). Two paths close them:

* at start-up, :func:`orphaned_intents` scans the recent tail for intents without
  an outcome (a crash between the two commits);
* while running, :class:`OutcomeBacklog` holds outcome records the store refused
  and appends them once it takes records again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import msgspec

from gateway.audit.log import AuditLog
from gateway.audit.record import AnyRecord, AuditRecord, decode_record, rfc3339
from gateway.audit.store import AuditStore, StoreError
from gateway.errors import GatewayError

log = logging.getLogger("gateway.audit")

#: How far back start-up looks. A crash leaves at most the lookups that were in
#: flight, all within the last moments of the log.
TAIL = 10_000


def orphaned_intents(store: AuditStore, size: int, tail: int = TAIL) -> list[AnyRecord]:
    """Intents among the last ``tail`` records that have no outcome record."""
    open_intents: dict[str, AnyRecord] = {}
    for row in store.iter_records(max(0, size - tail), size):
        if not row.body:
            continue  # pruned by retention
        record = decode_record(row.body)
        if record.kind == "lookup.intent":
            open_intents[record.request_id] = record
        elif record.kind == "lookup":
            open_intents.pop(record.request_id, None)
    return list(open_intents.values())


def closing_record(intent: AnyRecord, why: str) -> AnyRecord:
    """The outcome of a lookup whose real outcome was lost: failed, nothing returned.

    Format 2 refers to the intent by ``request_id`` and repeats none of it.
    """
    if isinstance(intent, AuditRecord):
        return AuditRecord(
            kind="lookup",
            time=rfc3339(time.time()),
            request_id=intent.request_id,
            decision="error",
            status=503,
            error="audit.unavailable",
            detail=why,
        )
    return msgspec.structs.replace(
        intent,
        kind="lookup",
        time=rfc3339(time.time()),
        decision="error",
        status=503,
        error="audit.unavailable",
        detail=why,
    )


async def close_orphans(audit: AuditLog, store: AuditStore) -> int:
    """Append an outcome for every open intent of a previous run; return how many."""
    orphans = await asyncio.to_thread(orphaned_intents, store, audit.size)
    for intent in orphans:
        await audit.append(
            closing_record(
                intent,
                "the gateway stopped before this lookup's outcome was recorded; "
                "the caller received no score",
            )
        )
    if orphans:
        log.warning("closed %d lookups a previous run left without an outcome", len(orphans))
    return len(orphans)


class _Appender(Protocol):
    async def append(self, record: AnyRecord, index: Sequence[str] = ()) -> int: ...

    @property
    def size(self) -> int: ...


class OutcomeBacklog:
    """Outcome records the store refused, appended again once it recovers.

    A commit can fail on the caller's side after the database made it durable (the
    connection is lost before the acknowledgement). With ``store``, each record is
    looked for in the log's tail since it was refused before it is appended again,
    so such a record is not written twice.
    """

    def __init__(
        self,
        audit: _Appender,
        interval: float = 1.0,
        limit: int = 100_000,
        *,
        store: AuditStore | None = None,
    ) -> None:
        self._audit = audit
        self._store = store
        self._interval = interval
        # (record, index, the log's size when it was refused)
        self._pending: deque[tuple[AnyRecord, tuple[str, ...], int]] = deque()
        self._limit = limit
        self._task: asyncio.Task[None] | None = None
        self._flushing = False

    def add(self, record: AnyRecord, index: Sequence[str] = ()) -> None:
        if len(self._pending) >= self._limit:
            # The intent stays open in the log; start-up closes it. Memory stays bounded.
            log.error("outcome backlog full; an open intent is left for start-up to close")
            return
        self._pending.append((record, tuple(index), self._audit.size))

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Append what is pending, oldest first; one flusher at a time, so no outcome
        is written twice."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._pending:
                record, index, since = self._pending[0]
                try:
                    if self._store is None or not await asyncio.to_thread(
                        self._store.has_record, record.request_id, record.kind, since
                    ):
                        await self._audit.append(record, index)
                except (GatewayError, StoreError):
                    return
                self._pending.popleft()
        finally:
            self._flushing = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outcome-backlog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
