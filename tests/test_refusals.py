"""Refusals of strangers: per-source buckets and aggregated records in a real audit log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.audit.reconcile import OutcomeBacklog
from gateway.audit.record import AuditRecord, decode_record
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.errors import GatewayError, Unauthenticated
from gateway.refusals import Refusals
from gateway.requestid import RequestIds
from gateway.settings import RefusalLimits

KEY = bytes(range(32))
ADDRESS = "192.0.2.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _aggregates(store: AuditStore) -> list[AuditRecord]:
    out = []
    for row in store.iter_records(0, store.head().size):
        record = decode_record(row.body)
        if isinstance(record, AuditRecord) and record.kind == "refusal.aggregate":
            out.append(record)
    return out


async def _with_log(tmp_path: Path, limits: RefusalLimits, clock: Clock, scenario):  # type: ignore[no-untyped-def]
    store = AuditStore.open(data_dir=tmp_path)
    log = AuditLog(store, KeyRing.load_or_create(tmp_path))
    await log.start()
    backlog = OutcomeBacklog(log)
    ids = RequestIds()
    refusals = Refusals(log, backlog, KEY, ids.next_id, limits=limits, clock=clock)
    try:
        await scenario(refusals, ids, store, backlog)
    finally:
        await refusals.stop()
        await backlog.stop()
        await log.close()
        store.close()


def _bad_key() -> GatewayError:
    return Unauthenticated("a valid gateway key is required")


def test_a_source_past_its_burst_is_answered_429_until_its_bucket_refills(tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(refusals: Refusals, ids: RequestIds, *_: object) -> None:
        codes = [refusals.refuse(ADDRESS, ids.next_id(), _bad_key()).code for _ in range(12)]
        assert codes == ["client.unauthenticated"] * 10 + ["source.limited"] * 2
        # Another source has its own bucket.
        assert refusals.refuse("192.0.2.8", ids.next_id(), _bad_key()).status == 401
        clock.now += 1.0  # 5 tokens back
        again = [refusals.refuse(ADDRESS, ids.next_id(), _bad_key()).status for _ in range(6)]
        assert again == [401] * 5 + [429]

    asyncio.run(_with_log(tmp_path, RefusalLimits(per_second=5, burst=10), clock, scenario))


def test_refusals_are_written_as_aggregates_holding_every_request_id(tmp_path: Path) -> None:
    """An aggregate is written when it holds max_ids ids, and the rest at shutdown;
    each request id is in exactly one aggregate, and the source is a pseudonym."""
    given: list[str] = []

    async def scenario(
        refusals: Refusals, ids: RequestIds, store: AuditStore, backlog: OutcomeBacklog
    ) -> None:
        for _ in range(10):
            request_id = ids.next_id()
            given.append(request_id)
            refusals.refuse(ADDRESS, request_id, _bad_key())
        await asyncio.sleep(0.2)  # the full aggregate of 4 ids was written in the background
        assert sum(a.count or 0 for a in _aggregates(store)) == 8
        assert refusals.open_ids == 2

    store_dir = tmp_path
    asyncio.run(_with_log(store_dir, RefusalLimits(max_ids=4), Clock(), scenario))
    store = AuditStore.open(data_dir=store_dir)
    aggregates = _aggregates(store)
    store.close()
    assert [a.count for a in aggregates] == [4, 4, 2]
    assert [i for a in aggregates for i in a.request_ids] == given
    for aggregate in aggregates:
        assert aggregate.error == "client.unauthenticated"
        assert aggregate.status == 401
        assert aggregate.source is not None
        assert aggregate.source.startswith("hmac-sha256:")
        assert ADDRESS not in aggregate.source
        assert aggregate.until is not None
    raw = (store_dir / "audit.db").read_bytes() if (store_dir / "audit.db").exists() else b""
    assert ADDRESS.encode() not in raw


def test_aggregates_the_store_refuses_wait_on_the_backlog(tmp_path: Path) -> None:
    async def scenario(
        refusals: Refusals, ids: RequestIds, store: AuditStore, backlog: OutcomeBacklog
    ) -> None:
        path = store.engine.url.database or ""
        with sqlite3.connect(path, isolation_level=None) as conn:
            conn.execute(
                "CREATE TRIGGER full BEFORE INSERT ON audit_record "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
            refusals.refuse(ADDRESS, ids.next_id(), _bad_key())
            refusals.flush()
            for _ in range(100):
                await asyncio.sleep(0.02)
                if len(backlog):
                    break
            assert len(backlog) == 1
            conn.execute("DROP TRIGGER full")
        await backlog.flush()
        assert len(backlog) == 0
        assert [a.count for a in _aggregates(store)] == [1]

    asyncio.run(_with_log(tmp_path, RefusalLimits(), Clock(), scenario))


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(None, id="no-peer-address"),
        pytest.param("::1", id="ipv6"),
        pytest.param("/run/gateway.sock", id="unix-socket"),
    ],
)
def test_the_source_pseudonym_is_keyed_and_stable(peer: str | None) -> None:
    ids = RequestIds()
    one = Refusals(None, None, KEY, ids.next_id)  # type: ignore[arg-type]
    other = Refusals(None, None, bytes(32), ids.next_id)  # type: ignore[arg-type]
    source = peer or "-"
    assert one.source_pseudonym(source) == one.source_pseudonym(source)
    assert one.source_pseudonym(source) != other.source_pseudonym(source)
    assert source not in one.source_pseudonym(source).removeprefix("hmac-sha256:")
