"""An open-loop load at a fixed rate: request i leaves at ``start + i / rate``.

wrk's ``delay()`` hook pauses after each answer, so its rate falls as latency
rises (a soak paced that way ran at 37% of capacity, not 50%). Here the send
times do not depend on the answers, like wrk2's ``-R``, which Debian does not
ship: a slow answer delays nobody else. Latency is measured from the moment the
request is sent; ``from_due`` measures it from the moment it was due, so a
client that falls behind shows up there as latency, not as a lower rate (no
coordinated omission). ``late_starts`` counts sends more than 1 ms late.

    .venv/bin/python bench/pacer.py http://127.0.0.1:8080/klout/v2/user.json/ \\
        /score?key=demo-crm-key --rate 100 --seconds 20

Prints one JSON object: requests, achieved rate, non-2xx, errors, p50/p90/p99/
p99.9/max in microseconds, and, with ``--every``, the same per interval.
``bench/loadtest.py paced`` and ``soak`` run it pinned to the load CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp


def percentiles(values: list[float]) -> dict[str, int]:
    ordered = sorted(values)
    if not ordered:
        return {"p50_us": 0, "p90_us": 0, "p99_us": 0, "p999_us": 0, "max_us": 0}

    def at(q: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6)

    return {
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": int(ordered[-1] * 1e6),
    }


async def run(
    prefix: str, suffix: str, rate: float, seconds: float, every: float, limit: int
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    latencies: list[float] = []
    from_due: list[float] = []  # including how late the client sent it
    windows: list[dict[str, Any]] = []
    window: list[float] = []
    counts = {"requests": 0, "non_2xx": 0, "errors": 0, "late_starts": 0}
    in_flight: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, url: str, due: float) -> None:
        sent = time.perf_counter()
        try:
            async with session.get(url, allow_redirects=False) as answer:
                await answer.read()
                if not 200 <= answer.status < 300:
                    counts["non_2xx"] += 1
        except (aiohttp.ClientError, TimeoutError):
            counts["errors"] += 1
            return
        done = time.perf_counter()
        took = done - sent
        latencies.append(took)
        from_due.append(done - due)
        window.append(took)
        counts["requests"] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        next_window = start + every if every > 0 else float("inf")
        i = 0
        while True:
            due = start + i / rate
            if due - start >= seconds:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.001:
                counts["late_starts"] += 1
            if time.perf_counter() >= next_window:
                windows.append({"t": round(next_window - start, 1), **percentiles(window)})
                window.clear()
                next_window += every
            task = asyncio.create_task(one(session, f"{prefix}{i % 1000 + 1}{suffix}", due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
        if in_flight:
            await asyncio.wait(in_flight, timeout=15)
        elapsed = time.perf_counter() - start
    return {
        **counts,
        "target_rps": rate,
        "rps": round(counts["requests"] / elapsed, 1),
        "duration_s": round(elapsed, 2),
        **percentiles(latencies),
        "from_due": percentiles(from_due),
        "windows": windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="URL up to the id (ids cycle 1..1000)")
    parser.add_argument("suffix", help="the rest of the URL after the id")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=0.0, help="per-interval percentiles (s)")
    parser.add_argument("--limit", type=int, default=256, help="connections at most")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.prefix, args.suffix, args.rate, args.seconds, args.every, args.limit)
    )
    print("PACERJSON " + json.dumps(result))


if __name__ == "__main__":
    main()
