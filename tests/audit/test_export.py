"""Export: full and time-filtered JSONL both verify; CSV is plain and formula-safe."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest

from gateway.audit.log import AuditLog
from gateway.audit.lookup_csv import write_csv
from gateway.audit.lookups import iter_store_records
from gateway.audit.record import AuditRecord
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_export
from tests.audit.support import export_bytes, make_record


def _populate(store: AuditStore, keyring: KeyRing, count: int = 60) -> None:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(count):
            await log.append(make_record(i, second=i))
            if i % 7 == 6:
                await log.checkpoint()
        await log.close()

    asyncio.run(scenario())


def test_full_export_carries_every_record_in_order(store: AuditStore, keyring: KeyRing) -> None:
    _populate(store, keyring)
    lines = [json.loads(line) for line in export_bytes(store, keyring).splitlines()]
    assert lines[0]["type"] == "header"
    assert lines[-1]["type"] == "seal"
    assert [o["seq"] for o in lines if o["type"] == "record"] == list(range(60))
    sizes = [o["size"] for o in lines if o["type"] == "checkpoint"]
    assert sizes == sorted(set(sizes))
    assert sizes[-1] == 60


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        pytest.param("2026-11-25T18:16:10", "2026-11-25T18:16:20", range(10, 20), id="middle"),
        pytest.param(None, "2026-11-25T18:16:05", range(0, 5), id="head-only"),
        pytest.param("2026-11-25T18:16:55", None, range(55, 60), id="tail-only"),
        pytest.param("2027-01-01T00:00:00", None, range(0), id="nothing-in-window"),
    ],
)
def test_filtered_export_verifies(
    store: AuditStore,
    keyring: KeyRing,
    since: str | None,
    until: str | None,
    expected: range,
) -> None:
    """Left-out records become compact ranges; the whole tree still checks against the seal."""
    _populate(store, keyring)
    data = export_bytes(store, keyring, since=since, until=until)
    result = verify_export([data], keyring.public_keys)
    assert result.ok, str(result)
    assert (result.records, result.size) == (len(expected), 60)
    seqs = [json.loads(x)["seq"] for x in data.splitlines() if b'"type":"record"' in x]
    assert seqs == list(expected)


def test_deleting_a_range_line_is_detected(store: AuditStore, keyring: KeyRing) -> None:
    _populate(store, keyring)
    lines = export_bytes(store, keyring, since="2026-11-25T18:16:10").splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"type":"range"' in line)
    del lines[index]
    result = verify_export([b"".join(lines)], keyring.public_keys)
    assert (result.code, result.line) == ("deleted", index + 1)


def test_empty_log_exports_and_verifies(store: AuditStore, keyring: KeyRing) -> None:
    result = verify_export([export_bytes(store, keyring)], keyring.public_keys)
    assert result.ok
    assert result.size == 0


def test_export_signs_a_fresh_checkpoint_once(store: AuditStore, keyring: KeyRing) -> None:
    """An export covers the committed head; a second export of the same head re-uses it."""
    _populate(store, keyring, count=5)
    first = export_bytes(store, keyring).splitlines()[-2]
    second = export_bytes(store, keyring).splitlines()[-2]
    assert first == second


def test_rotated_keys_verify_together(store: AuditStore, keyring: KeyRing) -> None:
    """Checkpoints of the old key and the new key verify when both public keys are pinned."""
    _populate(store, keyring, count=10)
    rotated = keyring.rotate()

    async def more() -> None:
        log = AuditLog(store, rotated)
        await log.start()
        await log.append(make_record(100))
        await log.close()

    asyncio.run(more())
    data = export_bytes(store, rotated)
    both = verify_export([data], rotated.public_pems())
    assert both.ok
    assert set(both.key_ids) == {keyring.key_id, rotated.key_id}
    only_new = verify_export([data], rotated.public_pem())
    assert only_new.code == "unknown_key"


def test_csv_is_plain_and_formula_safe(store: AuditStore, keyring: KeyRing) -> None:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        await log.append(
            AuditRecord(
                kind="lookup", time="2026-11-25T00:00:00.000000Z", request_id="=HYPERLINK(1)"
            )
        )
        await log.close()

    asyncio.run(scenario())
    # The CSV the CLI and /admin/audit/export serve (gateway/audit/lookup_csv.py):
    # a cell a spreadsheet would run as a formula gets a leading quote (OWASP).
    for raw_records in (True, False):
        out = io.StringIO()
        assert write_csv(iter_store_records(store), out, raw_records=raw_records) == 1
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        assert rows[0]["request_id"] == "'=HYPERLINK(1)"
    assert rows[0]["seq"] == "0"
