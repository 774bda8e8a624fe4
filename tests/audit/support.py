"""Helpers shared by the audit tests: records, a populated log, export bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import msgspec

from gateway.audit.export import export_jsonl
from gateway.audit.log import AuditLog
from gateway.audit.people import PersonCommitter
from gateway.audit.record import AuditRecord, AuditRecordV1
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore

#: The commitment key of records made here; a data dir's own comes from its secret.
TEST_COMMITTER = PersonCommitter(b"\x07" * 32)


def _subjects(i: int, subjects: Sequence[str]) -> list[str]:
    return list(subjects) or [f"hmac-sha256:{i % 13:064x}"]


def make_entry(
    i: int,
    *,
    second: int | None = None,
    subjects: Sequence[str] = (),
    committer: PersonCommitter = TEST_COMMITTER,
) -> tuple[AuditRecord, tuple[str, ...]]:
    """A format-2 lookup record naming ``subjects``, and its subject-index pseudonyms:
    what ``AuditLog.append(record, index)`` takes."""
    people = _subjects(i, subjects)
    record = make_record(i, second=second)
    refs = committer.refs(record.request_id, ((p, "asked", "found") for p in people))
    return msgspec.structs.replace(record, people=refs), tuple(people)


def make_record(i: int, *, second: int | None = None) -> AuditRecord:
    """A format-2 lookup record of one person (committed with ``TEST_COMMITTER``)."""
    s = i % 60 if second is None else second
    request_id = f"req-{i}"
    person = TEST_COMMITTER.refs(request_id, [(_subjects(i, ())[0], "asked", "found")])
    return AuditRecord(
        kind="lookup",
        time=f"2026-11-25T18:16:{s:02d}.{i % 1_000_000:06d}Z",
        request_id=request_id,
        client="acme",
        client_kind="crm",
        purpose="recruiting",
        upstream="klout",
        route="/v2/user.json/{kloutId}/score",
        people=person,
        decision="allow",
        rules=["r1"],
        policy_version="v1",
        outcome="found",
        upstream_status=200,
        status=200,
        latency_ms=1.5,
    )


def make_record_v1(i: int, *, subjects: Sequence[str] = ()) -> AuditRecordV1:
    """A record of format 1, as logs written before format 2 hold them."""
    return AuditRecordV1(
        kind="lookup",
        time=f"2026-11-25T18:16:{i % 60:02d}.{i % 1_000_000:06d}Z",
        request_id=f"req-{i}",
        client="acme",
        purpose="recruiting",
        upstream="klout",
        route="/v2/user.json/{kloutId}/score",
        subjects=_subjects(i, subjects),
        decision="allow",
        rules=["r1"],
        policy_version="v1",
        outcome="found",
        upstream_status=200,
        status=200,
        latency_ms=1.5,
    )


async def fill(log: AuditLog, count: int, *, start: int = 0, per_round: int = 50) -> list[int]:
    """Append ``count`` records in concurrent rounds; return their seqs."""
    import asyncio

    seqs: list[int] = []
    for first in range(start, start + count, per_round):
        last = min(start + count, first + per_round)
        seqs += await asyncio.gather(*(log.append(make_record(i)) for i in range(first, last)))
    return seqs


def export_bytes(
    store: AuditStore, keyring: KeyRing, *, since: str | None = None, until: str | None = None
) -> bytes:
    out = io.BytesIO()
    export_jsonl(store, keyring, out, since=since, until=until)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
