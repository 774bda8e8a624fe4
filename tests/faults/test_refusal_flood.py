"""A flood of wrong keys from one source: limited, aggregated, and cheap to store.

Issue 10: one ``wrk`` with a wrong key wrote about 950 bytes of audit store per
refused request, enough to fill a disk and take the gateway down for everyone.
The bound here is the one in decision 0001 §5: at most 50 bytes per refused request,
measured as the SQLite file plus its WAL after a checkpoint (bench/refusal_flood.py
measures the same under a saturating load).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.faults.support import SCORE_PATH, export_and_verify, sqlite_path
from tests.support.gateway import running_gateway

REQUESTS = 4_000
THREADS = 4


def _store_bytes(database: str) -> int:
    """Bytes of the SQLite file and its WAL once the WAL is checkpointed into the file."""
    with sqlite3.connect(database, timeout=10) as conn:
        for _ in range(50):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            time.sleep(0.05)
    return sum(p.stat().st_size for p in (Path(database), Path(database + "-wal")) if p.exists())


def test_a_flood_of_wrong_keys_costs_at_most_50_bytes_per_refusal(tmp_path: Path) -> None:
    """Every refused request id is in exactly one refusal.aggregate of the verified
    export; past its burst the source is answered 429 source.limited; the store grows
    by at most 50 bytes per refused request."""
    answers: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def flood(worker: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(REQUESTS // THREADS):
                r = client.get(SCORE_PATH, params={"key": f"wrong-{worker}-{i}"})
                with lock:
                    answers.append((r.status_code, r.json()["code"], r.headers["x-request-id"]))

    with running_gateway(tmp_path / "var") as gw:
        database = sqlite_path(gw.state.store)
        before = _store_bytes(database)
        workers = [threading.Thread(target=flood, args=(n, gw.url)) for n in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        log = export_and_verify(gw.url)  # an export writes the open aggregates first
        after = _store_bytes(database)
    assert log.result.ok, str(log.result)
    assert len(answers) == REQUESTS
    codes = Counter((status, code) for status, code, _ in answers)
    assert set(codes) == {(401, "client.unauthenticated"), (429, "source.limited")}
    assert codes[(429, "source.limited")] > 0
    held = Counter(i for r in log.records if r.kind == "refusal.aggregate" for i in r.request_ids)
    assert all(held[request_id] == 1 for _, _, request_id in answers)
    assert sum(held.values()) == REQUESTS
    per_refusal = (after - before) / REQUESTS
    print(f"store grew {after - before} B for {REQUESTS} refusals: {per_refusal:.1f} B each")
    assert per_refusal <= 50
