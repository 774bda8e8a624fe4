"""Retention: records older than `audit: retention` lose their bodies, keep their hashes,
and the log still verifies, with the pruned range reported as pruned, not as tampering."""

from __future__ import annotations

import asyncio
import calendar
import time
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.audit.retention import prune_expired
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_export
from gateway.cli import main
from gateway.policies.loader import PolicyError, parse_policy
from tests.audit.support import export_bytes, make_entry

REPO = Path(__file__).resolve().parents[2]
# make_entry(i) is timed 2026-11-25T18:16:<i % 60>: a cutoff at second 20 prunes seq 0..19.
CUTOFF = calendar.timegm(time.strptime("2026-11-25T18:16:20", "%Y-%m-%dT%H:%M:%S"))


def _fill(store: AuditStore, keyring: KeyRing, count: int) -> None:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(count):
            await log.append(*make_entry(i))
        await log.close()

    asyncio.run(scenario())


def _prune(store: AuditStore, keyring: KeyRing, retention: int = 3600) -> tuple[int, int] | None:
    async def scenario() -> tuple[int, int] | None:
        log = AuditLog(store, keyring)
        await log.start()
        try:
            return await prune_expired(log, store, retention, actor="test",
                                       retention_text=f"{retention}s",
                                       clock=lambda: CUTOFF + retention)  # fmt: skip
        finally:
            await log.close()

    return asyncio.run(scenario())


def test_a_pruned_log_still_verifies_and_reports_the_range(
    store: AuditStore, keyring: KeyRing
) -> None:
    """After pruning, the export has no body of a pruned record but verifies, naming the
    pruned range; the signed audit.prune record says which range and why."""
    _fill(store, keyring, 30)
    assert _prune(store, keyring) == (0, 20)
    assert [row.body for row in store.iter_records(0, 20)] == [b""] * 20
    # The subject index forgets pruned records: seq 3 and 16 named this pseudonym.
    assert [row.seq for row in store.subject_records([f"hmac-sha256:{3:064x}"])] == [29]
    data = export_bytes(store, keyring)
    assert b'"request_id":"req-3"' not in data
    assert b'{"type":"pruned","begin":0,"end":20,' in data
    result = verify_export([data], keyring.public_pems())
    assert result.ok, result
    assert result.pruned == ((0, 20),)
    assert "pruned seq 0..19 (retention)" in str(result)
    assert b'"kind":"audit.prune"' in data
    assert _prune(store, keyring) is None  # nothing more is old enough


def test_the_log_restarts_over_pruned_records(store: AuditStore, keyring: KeyRing) -> None:
    """Recovery accepts an empty body below the pruned mark and keeps appending."""
    _fill(store, keyring, 25)
    _prune(store, keyring)
    _fill(store, keyring, 3)
    assert verify_export([export_bytes(store, keyring)], keyring.public_pems()).ok


def test_bodies_dropped_without_a_prune_record_are_deletion(
    store: AuditStore, keyring: KeyRing
) -> None:
    """An operator who empties bodies without the signed record is caught as `deleted`."""
    _fill(store, keyring, 30)
    store.prune(5, 9)
    result = verify_export([export_bytes(store, keyring)], keyring.public_pems())
    assert not result.ok
    assert result.code == "deleted"
    assert "without a signed audit.prune record" in result.message


def test_a_time_window_export_keeps_the_prune_record(store: AuditStore, keyring: KeyRing) -> None:
    """An export of a window that holds pruned records also carries the prune record
    that authorises them, wherever it falls."""
    _fill(store, keyring, 30)
    _prune(store, keyring)
    data = export_bytes(store, keyring, until="2026-11-25T18:16:10.000000Z")
    result = verify_export([data], keyring.public_pems())
    assert result.ok, result
    assert result.pruned == ((0, 10),)


def test_gateway_audit_prune_uses_the_retention(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway audit prune --retention 1d` prunes the week-old test records; verify says so."""
    data = tmp_path / "var"
    keyring = KeyRing.load_or_create(data)
    store = AuditStore.open(data_dir=data)
    _fill(store, keyring, 12)
    store.close()
    assert main(["audit", "prune", "--data-dir", str(data), "--retention", "1d"]) == 0
    assert "pruned records seq 0..11" in capsys.readouterr().err
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--data-dir", str(data), "--out", str(out)]) == 0
    (tmp_path / "k.pem").write_bytes(keyring.public_pems())
    capsys.readouterr()
    assert main(["audit", "verify", str(out), "--public-key", str(tmp_path / "k.pem")]) == 0
    assert "pruned seq 0..11 (retention)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "code"),
    [pytest.param("4OOd", "duration.invalid", id="letter-o"),
     pytest.param("400", "policy.wrong_type", id="no-unit-is-a-number"),
     pytest.param("1y", "duration.invalid", id="unknown-unit")],
)  # fmt: skip
def test_a_bad_retention_is_reported_with_its_place(value: str, code: str) -> None:
    """A retention that is not a duration is refused at its line, as a duration error."""
    text = (REPO / "policies.yaml").read_text()
    line = text[: text.index("retention: 400d")].count("\n") + 1
    with pytest.raises(PolicyError) as caught:
        parse_policy(text.replace("retention: 400d", f"retention: {value}"))
    assert [(p.code, p.line) for p in caught.value.problems] == [(code, line)]
