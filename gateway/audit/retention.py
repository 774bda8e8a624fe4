"""Retention: prune records older than ``audit: retention`` without breaking the log.

Storage limitation (GDPR Art. 5(1)(e)) says personal data is kept no longer than
needed; an append-only log must still verify. So pruning drops a record's *body*
and keeps its *leaf hash*: every root, checkpoint and proof stays computable, and
an export shows the range as ``pruned`` (its compact range of hashes) instead of
records.

Each prune first appends a signed ``audit.prune`` record naming the range
``[from, until)`` (``detail: "pruned [a, b) ..."``, ``count``), and only then drops
the bodies, so no body is dropped without a record saying so; the verifier
accepts a pruned range only where an ``audit.prune`` record in the same export
covers it. ``audit.prune`` records themselves are never pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.audit.record import AnyRecord, AuditRecord, rfc3339
from gateway.audit.store import AuditStore

log = logging.getLogger("gateway.audit")

PRUNE_KIND = "audit.prune"


class AuditAppender(Protocol):
    """What pruning needs of the log: an :class:`~gateway.audit.log.AuditLog` or the
    sequencer's client."""

    async def append(self, record: AnyRecord, index: Sequence[str] = ...) -> int: ...


async def prune_expired(
    audit: AuditAppender,
    store: AuditStore,
    retention_seconds: int,
    *,
    actor: str,
    retention_text: str,
    clock: Callable[[], float] = time.time,
) -> tuple[int, int] | None:
    """Prune every record older than the retention; return the range, or None if none."""
    cutoff = rfc3339(clock() - retention_seconds)
    begin = await asyncio.to_thread(store.pruned_until)
    end = await asyncio.to_thread(store.first_seq_since, begin, cutoff)
    if end <= begin:
        return None
    await audit.append(
        AuditRecord(
            kind=PRUNE_KIND,
            time=rfc3339(clock()),
            request_id=uuid.uuid4().hex,
            actor=actor,
            count=end - begin,
            detail=f"pruned [{begin}, {end}) older than {cutoff} (retention {retention_text}); "
            "bodies dropped, leaf hashes kept",
        )
    )
    dropped = await asyncio.to_thread(store.prune, begin, end)
    log.info("retention %s: pruned records [%d, %d) (%d bodies)", retention_text, begin, end,
             dropped)  # fmt: skip
    return begin, end


class RetentionTask:
    """Prune at start and then every ``interval`` seconds, by the policy's retention."""

    def __init__(
        self,
        audit: AuditAppender,
        store: AuditStore,
        retention: Callable[[], str | None],
        *,
        interval: float = 3600.0,
    ) -> None:
        self._audit = audit
        self._store = store
        self._retention = retention
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> tuple[int, int] | None:
        from gateway.policies.loader import parse_duration

        text = self._retention()
        seconds = parse_duration(text) if text else None
        if text is None or seconds is None:
            return None
        return await prune_expired(
            self._audit, self._store, seconds, actor="gateway", retention_text=text
        )

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a failed prune is retried next time; serving goes on
                log.exception("retention pruning failed")
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
