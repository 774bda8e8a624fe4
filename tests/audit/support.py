"""Helpers shared by the audit tests: records, a populated log, export bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from gateway.audit.export import export_jsonl
from gateway.audit.log import AuditLog
from gateway.audit.record import AuditRecord
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore


def make_record(i: int, *, second: int | None = None, subjects: Sequence[str] = ()) -> AuditRecord:
    s = i % 60 if second is None else second
    return AuditRecord(
        kind="lookup",
        time=f"2026-11-25T18:16:{s:02d}.{i % 1_000_000:06d}Z",
        request_id=f"req-{i}",
        client="acme",
        purpose="recruiting",
        upstream="klout",
        route="/v2/user.json/{kloutId}/score",
        subjects=list(subjects) or [f"hmac-sha256:{i % 13:064x}"],
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
