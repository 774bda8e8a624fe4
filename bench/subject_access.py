"""Subject access on a large log: how long finding one person's records takes.

    .venv/bin/python bench/subject_access.py --records 1000000 --batch 32

Builds a SQLite log of ``--records`` format-2 lookup records, each naming one of
``--people`` pseudonyms, committed in batches of ``--batch`` (the gateway's group
commits at saturation hold 10-30), then times ``AuditStore.subject_records`` for
one person: the scan of the subject index (one row per batch) plus reading the
records it names. The log is kept in ``--work-dir`` so reruns skip the build.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gateway.audit.merkle import Frontier, leaf_hash
from gateway.audit.people import PersonCommitter
from gateway.audit.record import AuditRecord, canonical_bytes
from gateway.audit.store import AuditStore, PreparedRecord

COMMITTER = PersonCommitter(b"\x07" * 32)


def pseudonym(n: int) -> str:
    return "hmac-sha256:" + f"{n:064x}"


def build(store: AuditStore, records: int, batch: int, people: int) -> None:
    frontier = Frontier()
    for start in range(0, records, batch):
        prepared = []
        for i in range(start, min(records, start + batch)):
            who = pseudonym(i % people)
            request_id = f"req-{i:012d}"
            record = AuditRecord(
                kind="lookup",
                time="2026-12-01T00:00:00.000000Z",
                request_id=request_id,
                client="crm",
                upstream="klout",
                people=COMMITTER.refs(request_id, [(who, "asked", "found")]),
                outcome="found",
                status=200,
            )
            body = canonical_bytes(record)
            prepared.append(PreparedRecord(record, body, leaf_hash(body), (who,)))
        _, frontier = store.append_batch(prepared, frontier)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    data_dir = args.work_dir / f"subject-{args.records}-{args.batch}-{args.people}"
    fresh = not (data_dir / "audit.db").exists()
    store = AuditStore.open(data_dir=data_dir)
    if fresh:
        started = time.perf_counter()
        build(store, args.records, args.batch, args.people)
        print(f"built {args.records:,} records in {time.perf_counter() - started:.1f} s")
    size = sum(f.stat().st_size for f in data_dir.glob("audit.db*")) / 2**20
    for n in (7, 99_999 % args.people, 12_345 % args.people):
        started = time.perf_counter()
        found = [r.seq for r in store.subject_records([pseudonym(n)])]
        took = time.perf_counter() - started
        expected = len(range(n, args.records, args.people))
        print(
            f"subject access for one person: {len(found)} records (expected {expected}) "
            f"in {took:.2f} s; log {args.records:,} records, {size:,.0f} MB"
        )
    store.close()


if __name__ == "__main__":
    main()
