"""Audit append throughput: durable group commit on SQLite (WAL, synchronous=FULL) or PostgreSQL.

    .venv/bin/python bench/audit_append.py --records 200000 --concurrency 1024
    .venv/bin/python bench/audit_append.py --database-url postgresql://postgres@127.0.0.1/test
    .venv/bin/python bench/audit_append.py --sequencer --connections 2   # as workers see it

``concurrency`` tasks each await ``AuditLog.append`` in a loop, as request handlers
do; the rate counts only records whose ``append`` returned (committed).

``--sequencer`` measures from the workers' side of the audit sequencer: a real
``gateway sequencer`` process owns the store, and the tasks append through
``--connections`` SequencerClient connections (one per worker), which encode each
record and wait for the sequencer's acknowledgement of its durable commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from gateway.audit.log import AuditLog
from gateway.audit.people import PersonCommitter
from gateway.audit.record import AuditRecord
from gateway.audit.sequencer import SequencerClient
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore, database_url

COMMITTER = PersonCommitter(b"\x07" * 32)  # format-2 records name people by commitment


def record(i: int) -> AuditRecord:
    return AuditRecord(
        kind="lookup",
        time="2026-11-25T18:16:22.123456Z",
        request_id=f"req-{i:012d}",
        client="acme",
        client_kind="service",
        purpose="recruiting",
        upstream="klout",
        route="/v2/user.json/{kloutId}/score",
        people=COMMITTER.refs(
            f"req-{i:012d}", [("hmac-sha256:" + f"{i % 1000:064x}", "asked", "found")]
        ),
        decision="allow",
        rules=["allow-recruiting"],
        policy_version="sha256:0123456789abcdef",
        outcome="found",
        upstream_status=200,
        status=200,
        latency_ms=3.25,
    )


async def run_via_sequencer(
    data_dir: Path, url: str | None, records: int, concurrency: int, connections: int
) -> None:
    socket = Path(tempfile.mkdtemp(prefix="seq-")) / "s.sock"
    command = [sys.executable, "-m", "gateway", "sequencer", "--data-dir", str(data_dir)]
    command += ["--socket", str(socket), "--log-level", "warning"]
    if url:
        command += ["--database-url", url]
    process = subprocess.Popen(command)  # noqa: ASYNC220 (started once, before timing)
    clients = [SequencerClient(socket) for _ in range(connections)]
    try:
        for client in clients:
            await client.start()
        per_task = records // concurrency
        template = [record(i) for i in range(1000)]

        async def producer(k: int) -> None:
            client = clients[k % connections]
            for i in range(per_task):
                await client.append(template[(k * 7 + i) % 1000])

        started, before = time.perf_counter(), _cpu_seconds(process.pid)
        await asyncio.gather(*(producer(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = _cpu_seconds(process.pid)
        cpu = [a - b for a, b in zip(after, before, strict=True)]
        await asyncio.sleep(0.6)  # one stats refresh
        stats = clients[0].stats
    finally:
        for client in clients:
            await client.close()
        process.terminate()
        process.wait(timeout=30)
    total = per_task * concurrency
    print(
        f"via sequencer ({'postgresql' if url else 'sqlite'}, {connections} connections): "
        f"{total} records in {elapsed:.2f} s = {total / elapsed:,.0f} records/s; "
        f"{stats.commits} commits (avg {total / max(stats.commits, 1):.0f} records/commit); "
        f"CPU µs per record: clients {cpu[0] / total * 1e6:.1f}, sequencer "
        f"{cpu[1] / total * 1e6:.1f}, PostgreSQL {cpu[2] / total * 1e6:.1f}"
    )


def _cpu_seconds(sequencer: int) -> tuple[float, float, float]:
    """CPU seconds so far of this process (the clients), the sequencer process, and
    every PostgreSQL server process on the machine (its backends and writers)."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: str) -> tuple[str, float]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "", 0.0
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        return name, (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    postgres = sum(
        seconds
        for name, seconds in (of(p) for p in os.listdir("/proc") if p.isdigit())
        if name == "postgres"
    )
    return time.process_time(), of(str(sequencer))[1], postgres


async def run(
    store: AuditStore, keyring: KeyRing, records: int, concurrency: int, max_batch: int
) -> None:
    log = AuditLog(store, keyring, max_batch=max_batch)
    await log.start()
    per_task = records // concurrency
    template = [record(i) for i in range(1000)]

    async def producer(offset: int) -> None:
        for i in range(per_task):
            await log.append(template[(offset + i) % 1000])

    started = time.perf_counter()
    await asyncio.gather(*(producer(k * 7) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    stats = log.stats
    await log.close()
    total = per_task * concurrency
    print(
        f"{store.engine.dialect.name}: {total} records in {elapsed:.2f} s = "
        f"{total / elapsed:,.0f} records/s; {stats.commits} commits "
        f"(avg {total / max(stats.commits, 1):.0f} records/commit), "
        f"last commit {stats.last_commit_latency * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=1024)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as uvicorn does")
    parser.add_argument("--sequencer", action="store_true", help="append through a sequencer")
    parser.add_argument("--connections", type=int, default=2, help="sequencer connections")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        data_dir = Path(tmp)
        keyring = KeyRing.load_or_create(data_dir)
        schema = None
        if args.database_url:
            schema = f"audit_bench_{uuid.uuid4().hex[:8]}"
            with create_engine(database_url(args.database_url)).begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        store = AuditStore.open(data_dir=data_dir, url=args.database_url, schema=schema)
        sizes = (args.records, args.concurrency, args.max_batch)
        try:
            if args.sequencer:
                url = args.database_url
                if url and schema:
                    url += ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"
                store.create()
                main_run = run_via_sequencer(
                    data_dir, url, args.records, args.concurrency, args.connections
                )
                if args.uvloop:
                    import uvloop

                    uvloop.run(main_run)
                else:
                    asyncio.run(main_run)
            elif args.uvloop:
                import uvloop

                uvloop.run(run(store, keyring, *sizes))
            else:
                asyncio.run(run(store, keyring, *sizes))
        finally:
            store.close()
            if schema:
                with create_engine(database_url(args.database_url)).begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
