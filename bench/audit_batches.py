"""CPU per audit record and per commit at a given batch size: the store alone.

    .venv/bin/python bench/audit_batches.py --batch 1 24 100 --records 20000

Calls ``AuditStore.append_batch`` in a loop on a fresh SQLite store (one thread, no
event loop, no contention), ``--batch`` records per commit, each record naming one
person (so each batch writes one subject-index block), each commit followed by
``sync()`` (the fsync of the write-ahead log that acknowledging it waits for),
and prints wall rate and user/system CPU per record and per commit. At saturation
the gateway's group commits hold 10-30 records; at light load, one or two.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from audit_append import record  # bench/: the format-2 record the append benchmark uses

from gateway.audit.merkle import Frontier, leaf_hash
from gateway.audit.record import canonical_bytes
from gateway.audit.store import AuditStore, PreparedRecord


def prepared(i: int) -> PreparedRecord:
    made = record(i)  # names the person "hmac-sha256:" + f"{i % 1000:064x}"
    body = canonical_bytes(made)
    return PreparedRecord(made, body, leaf_hash(body), ("hmac-sha256:" + f"{i % 1000:064x}",))


def measure(batch: int, records: int) -> str:
    store = AuditStore.open(data_dir=Path(tempfile.mkdtemp(prefix="audit-batches-")))
    items = [prepared(i) for i in range(records)]
    frontier = Frontier()
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for start in range(0, records, batch):
        _, frontier = store.append_batch(items[start : start + batch], frontier)
        store.sync()  # what the log's syncer does before acknowledging (fsync of the WAL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    store.close()
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    commits = -(-records // batch)
    return (
        f"batch {batch:>4}: {records / wall:>9,.0f} records/s; per record user "
        f"{user / records * 1e6:.1f} µs, sys {system / records * 1e6:.1f} µs; per commit "
        f"user {user / commits * 1e6:.0f} µs, sys {system / commits * 1e6:.0f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 24, 100])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    for batch in args.batch:
        print(measure(batch, args.records), flush=True)


if __name__ == "__main__":
    main()
