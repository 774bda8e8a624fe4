"""Refusals of strangers: limited per source, and on the record in aggregates.

A request refused before any client is identified (no key or a wrong one, a
malformed target, an unknown upstream, a source over its limit) is not a lookup
about anyone. One durable record each would let anyone who reaches the port fill
the disk: a single ``wrk`` with a wrong key wrote about 950 bytes per request,
9 GB an hour, and a full disk fails every lookup closed. So (decision 0001 §5):

* each source (peer address) has a token bucket of refusals; once it is empty the
  source's refusals are answered 429 ``source.limited`` until it refills, cheaply
  and still on the record;
* refusals are kept in memory per (source, code, status) and written as one
  ``refusal.aggregate`` record holding the count and every request id, when the
  aggregate reaches ``max_ids`` ids, every ``interval`` seconds, and at shutdown.
  A request id costs its 32 hex digits and a separator in the store.

The source in a record is a keyed pseudonym of the address, never the address.
The answer does not wait for the record: no score is at stake. A crash loses at
most one open interval; an aggregate the store refuses goes on the outcome
backlog, so every request id a caller holds is otherwise in exactly one aggregate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.audit.record import AuditRecord, rfc3339
from gateway.errors import GatewayError, RateLimited
from gateway.settings import RefusalLimits

log = logging.getLogger("gateway")

#: Sources tracked at once. Past it the idlest buckets are dropped: an attacker with
#: many addresses gets fresh buckets, but memory stays bounded.
MAX_SOURCES = 65_536
#: Open aggregates at once; past it all are written early, so memory stays bounded.
MAX_OPEN = 4_096


class RecordSink(Protocol):
    async def append(self, record: AuditRecord) -> int: ...


class Backlog(Protocol):
    def add(self, record: AuditRecord) -> None: ...


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Aggregate:
    started: float
    request_ids: list[str] = field(default_factory=list)


class Refusals:
    """Per-source refusal buckets and open aggregates of one process."""

    def __init__(
        self,
        audit: RecordSink,
        backlog: Backlog,
        source_key: bytes,
        next_id: Callable[[], str],
        *,
        limits: RefusalLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        self._backlog = backlog
        self._source_key = source_key
        self._next_id = next_id
        self.limits = limits or RefusalLimits()
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._open: dict[tuple[str, str, int], _Aggregate] = {}
        self._writing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    # -- the request path ----------------------------------------------------------------

    def refuse(self, peer: str | None, request_id: str, error: GatewayError) -> GatewayError:
        """The answer to a request refused before a client was identified: ``error``,
        or 429 ``source.limited`` once the source's bucket is empty; on the record
        either way."""
        source = peer or "-"
        if not self._take(source):
            retry = max(1, int(1 / self.limits.per_second + 0.999))
            error = RateLimited(
                "too many refused requests from this address; retry later",
                code="source.limited",
                headers={"Retry-After": str(retry)},
                extra={"retry_after": retry},
            )
        self.record(source, request_id, error.code, error.status)
        return error

    def record(self, source: str, request_id: str, code: str, status: int) -> None:
        """Count one refusal of ``source`` (a peer address) into its open aggregate."""
        key = (source, code, status)
        aggregate = self._open.get(key)
        if aggregate is None:
            if len(self._open) >= MAX_OPEN:
                self.flush()
            aggregate = self._open[key] = _Aggregate(self._clock())
        aggregate.request_ids.append(request_id)
        if len(aggregate.request_ids) >= self.limits.max_ids:
            del self._open[key]
            self._write_soon([self._record(key, aggregate)])

    def _take(self, source: str) -> bool:
        now = self._clock()
        limits = self.limits
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                self._forget_idle(now)
            bucket = self._buckets[source] = _Bucket(limits.burst, now)
        else:
            bucket.tokens = min(limits.burst, bucket.tokens + (now - bucket.at) * limits.per_second)
            bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_idle(self, now: float) -> None:
        # A bucket refills in burst/per_second seconds; a full one is the same as none.
        full_after = self.limits.burst / self.limits.per_second
        self._buckets = {s: b for s, b in self._buckets.items() if now - b.at < full_after}
        if len(self._buckets) >= MAX_SOURCES:
            self._buckets.clear()

    # -- records -------------------------------------------------------------------------

    def source_pseudonym(self, source: str) -> str:
        digest = hmac.new(self._source_key, source.encode(), hashlib.sha256).hexdigest()
        return "hmac-sha256:" + digest[:32]

    def _record(self, key: tuple[str, str, int], aggregate: _Aggregate) -> AuditRecord:
        source, code, status = key
        return AuditRecord(
            kind="refusal.aggregate",
            time=rfc3339(aggregate.started),
            request_id=self._next_id(),
            source=self.source_pseudonym(source),
            error=code,
            status=status,
            count=len(aggregate.request_ids),
            request_ids=aggregate.request_ids,
            until=rfc3339(self._clock()),
        )

    def _write_soon(self, records: list[AuditRecord]) -> None:
        task = asyncio.get_running_loop().create_task(self._write(records))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, records: list[AuditRecord]) -> None:
        results = await asyncio.gather(
            *(self._audit.append(r) for r in records), return_exceptions=True
        )
        for record, result in zip(records, results, strict=True):
            if isinstance(result, BaseException):
                # The store is down: the ids wait on the backlog, as refused lookups do.
                self._backlog.add(record)

    def flush(self) -> None:
        """Close every open aggregate and write it (in the background)."""
        if not self._open:
            return
        closing, self._open = self._open, {}
        self._write_soon([self._record(k, a) for k, a in closing.items()])

    async def written(self) -> None:
        """Close every open aggregate and wait until all are written (or backlogged):
        an export that starts after this holds every refusal answered before it."""
        self.flush()
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    @property
    def open_ids(self) -> int:
        return sum(len(a.request_ids) for a in self._open.values())

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="refusal-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.limits.interval)
            self.flush()

    async def stop(self) -> None:
        """Write every open aggregate and wait for the writes (shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)
