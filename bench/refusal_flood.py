"""What a flood of wrong keys costs the audit store, in bytes per refused request.

Starts ``gateway serve --demo`` on a free loopback port with a fresh data directory,
floods it with lookups carrying wrong keys from one source for ``--seconds`` (keep-alive
connections, as ``wrk`` would), stops it with SIGTERM (open refusal aggregates are
written at shutdown), checkpoints the SQLite WAL into the database file, and reports::

    (bytes of audit.db + audit.db-wal after) - (before)  /  refused requests

Target (issue 10, decision 0001 §5): at most 50 B per refused request; before refusal
aggregates it was about 950 B. Run::

    .venv/bin/python bench/refusal_flood.py --seconds 8 --connections 32

Everything listens on 127.0.0.1; the gateway process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def store_bytes(data_dir: Path) -> int:
    """Bytes of the SQLite store after its WAL is checkpointed into the file."""
    db = data_dir / "audit.db"
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in (db, data_dir / "audit.db-wal") if p.exists())


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:  # noqa: S310 - http://127.0.0.1
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"refusal_flood: the gateway at {url} did not become ready")


async def flood(port: int, seconds: float, connections: int) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    stop_at = time.monotonic() + seconds

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        i = 0
        try:
            while time.monotonic() < stop_at:
                i += 1
                writer.write(
                    f"GET /klout/v2/user.json/5001/score?key=wrong-{n}-{i} HTTP/1.1\r\n"
                    f"Host: gw\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                statuses[status] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
        finally:
            writer.close()

    await asyncio.gather(*(one(n) for n in range(connections)))
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep-tmp", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refusal-flood-"))
    data_dir = tmp / "var"
    port = free_port()
    url = f"http://{HOST}:{port}"
    log = (tmp / "gateway.log").open("w")
    command = [str(BIN / "python"), "-m", "gateway", "serve", "--demo", "--port", str(port),
               "--data-dir", str(data_dir), "--log-level", "warning"]  # fmt: skip
    gateway = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        wait_ready(url)
        before = store_bytes(data_dir)
        started = time.monotonic()
        statuses = asyncio.run(flood(port, args.seconds, args.connections))
        elapsed = time.monotonic() - started
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait()
        log.close()
    after = store_bytes(data_dir)
    refused = sum(n for status, n in statuses.items() if status >= 400)
    result = {
        "seconds": round(elapsed, 2),
        "connections": args.connections,
        "requests": sum(statuses.values()),
        "per_second": round(sum(statuses.values()) / elapsed),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "store_bytes_before": before,
        "store_bytes_after": after,
        "bytes_per_refused_request": round((after - before) / max(1, refused), 1),
        "gateway_exit": gateway.returncode,
    }
    print(json.dumps(result))
    if not args.keep_tmp:
        for path in sorted(tmp.rglob("*"), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        tmp.rmdir()
    return 0 if result["bytes_per_refused_request"] <= 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())
