"""Export and offline verification at scale: time, records/s and peak RSS.

    .venv/bin/python bench/audit_verify.py --records 1000000

Builds a log of ``--records`` records (direct batched appends, signed
checkpoints every 10,000 records) in ``--work-dir`` (kept, so reruns skip the
build), then runs the export and the verification each in a fresh subprocess
and reports its wall time and peak RSS (``ru_maxrss``). Targets: verify
>= 200,000 records/s; export peak RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

from gateway.audit.checkpoint import sign_checkpoint
from gateway.audit.merkle import leaf_hash
from gateway.audit.people import PersonCommitter
from gateway.audit.record import AuditRecord, canonical_bytes
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore, PreparedRecord

COMMITTER = PersonCommitter(b"\x07" * 32)  # format-2 records name people by commitment


def record(i: int) -> AuditRecord:
    return AuditRecord(
        kind="lookup",
        time=f"2026-11-25T{i // 3_600_000 % 24:02d}:{i // 60_000 % 60:02d}:"
        f"{i // 1000 % 60:02d}.{i % 1000:03d}000Z",
        request_id=f"req-{i:012d}",
        client="acme",
        client_kind="service",
        purpose="recruiting",
        upstream="klout",
        route="/v2/user.json/{kloutId}/score",
        people=COMMITTER.refs(
            f"req-{i:012d}", [("hmac-sha256:" + f"{(i * 7919) % 100_003:064x}", "asked", "found")]
        ),
        decision="allow",
        rules=["allow-recruiting"],
        policy_version="sha256:0123456789abcdef",
        outcome="found",
        upstream_status=200,
        status=200,
        latency_ms=3.25,
    )


def build(data_dir: Path, records: int) -> None:
    keyring = KeyRing.load_or_create(data_dir)
    store = AuditStore.open(data_dir=data_dir)
    frontier = store.head()
    started = time.perf_counter()
    while frontier.size < records:
        batch = []
        for i in range(frontier.size, min(records, frontier.size + 10_000)):
            body = canonical_bytes(record(i))
            batch.append(PreparedRecord(record(i), body, leaf_hash(body)))
        _, frontier = store.append_batch(batch, frontier)
        checkpoint = sign_checkpoint(
            keyring,
            origin=store.origin,
            size=frontier.size,
            root=frontier.root(),
            timestamp=time.time(),
        )
        store.add_checkpoint(checkpoint, frontier)
    store.close()
    print(f"built {records} records in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_export(data_dir: Path, out: Path) -> None:
    from gateway.audit.export import export_jsonl

    store = AuditStore.open(data_dir=data_dir)
    keyring = KeyRing.load(data_dir)
    started = time.perf_counter()
    with out.open("wb") as f:
        seal = export_jsonl(store, keyring, f)
    elapsed = time.perf_counter() - started
    store.close()
    size_mb = out.stat().st_size / 1e6
    print(
        f"export: {seal.size:,} records, {size_mb:,.0f} MB in {elapsed:.2f} s = "
        f"{seal.size / elapsed:,.0f} records/s; peak RSS {peak_rss_mb():.0f} MB"
    )


def phase_verify(data_dir: Path, out: Path) -> None:
    from gateway.audit.verify import verify_export

    pem = KeyRing.load(data_dir).public_pems()
    started = time.perf_counter()
    result = verify_export(out, pem, progress=False)
    elapsed = time.perf_counter() - started
    assert result.ok, str(result)
    cpu = sum(
        r.ru_utime + r.ru_stime
        for r in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )
    print(
        f"verify: {result.records:,} records in {elapsed:.2f} s = "
        f"{result.records / elapsed:,.0f} records/s; {cpu:.1f} CPU-s in all processes "
        f"({cpu / result.records * 1e6:.1f} us/record); peak RSS {peak_rss_mb():.0f} MB "
        f"(this process; each worker holds at most two 1 MiB blocks)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--work-dir", type=Path, default=Path("bench/results/audit_verify"))
    parser.add_argument("--phase", choices=("export", "verify"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir = args.work_dir / f"log-{args.records}"
    out = args.work_dir / f"export-{args.records}.jsonl"
    if args.phase == "export":
        phase_export(data_dir, out)
        return
    if args.phase == "verify":
        phase_verify(data_dir, out)
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    build(data_dir, args.records)
    for phase in ("export", "verify"):
        subprocess.run(
            [sys.executable, __file__, "--records", str(args.records), "--work-dir",
             str(args.work_dir), "--phase", phase],
            check=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
