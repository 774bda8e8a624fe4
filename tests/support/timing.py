"""Timing parity measured as a caller sees it: the real gateway, the real simulator
with log-normal latency, and a two-sample Kolmogorov-Smirnov test.

Used by tests/test_timing_parity.py (one run) and bench/timing_parity.py (repeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from gateway.demo.upstream import DemoUpstreamConfig
from tests.support.gateway import RunningGateway, limits, running_gateway
from tests.support.people import BOB, NO_RATE_LIMIT, policy_with_objections

#: A vendor ~30 ms away with a realistic spread (log-normal, sigma 0.35).
REALISTIC_VENDOR = DemoUpstreamConfig(
    calls_per_second=1e6, calls_per_day=10**9, delay_seconds=0.030, delay_sigma=0.35
)
CLASSES = {
    # nobody never existed: the vendor is asked and answers 404, neutralized.
    "missing": "/klout/v2/user.json/5999/score?key=demo-crm-key",
    # bob objected: answered by the gateway without the vendor.
    "objected": "/klout/v2/user.json/5002/score?key=demo-crm-key",
}
#: c(alpha) of the two-sample KS test at alpha = 0.001 (asymptotic).
C_ALPHA_0001 = 1.949


@contextlib.contextmanager
def timing_gateway(tmp: Path, *, parity: bool = True) -> Iterator[RunningGateway]:
    data_dir = tmp / "var"
    policy = policy_with_objections(tmp / "policies.yaml", data_dir, BOB, replace=NO_RATE_LIMIT)
    with running_gateway(
        data_dir,
        policies=policy,
        upstream_config=REALISTIC_VENDOR,
        limits=limits(timing_parity=parity, local_answer_delay=0.005),
    ) as gw:
        yield gw


async def _measure(
    base_url: str, per_class: int, concurrency: int, warmup: int, seed: int
) -> dict[str, list[float]]:
    rng = random.Random(seed)
    plan = [name for name in CLASSES for _ in range(per_class)]
    rng.shuffle(plan)  # interleaved: both classes meet the same load at the same time
    times: dict[str, list[float]] = {name: [] for name in CLASSES}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def run(queue: list[str], record: bool) -> None:
            while queue:
                name = queue.pop()
                started = time.perf_counter()
                r = await client.get(CLASSES[name])
                elapsed = time.perf_counter() - started
                if r.status_code != 200:
                    raise AssertionError(f"{name}: {r.status_code} {r.text[:200]}")
                if record:
                    times[name].append(elapsed)

        warm = ["missing"] * warmup  # the gateway learns the route's vendor-bound times
        await asyncio.gather(*(run(warm, False) for _ in range(concurrency)))
        await asyncio.gather(*(run(plan, True) for _ in range(concurrency)))
    return times


def measure(
    base_url: str, *, per_class: int, concurrency: int = 8, warmup: int = 200, seed: int = 0
) -> dict[str, list[float]]:
    """End-to-end seconds per request, for each class, interleaved at random."""
    return asyncio.run(_measure(base_url, per_class, concurrency, warmup, seed))


def ks_statistic(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(xs) and j < len(ys):
        x = min(xs[i], ys[j])
        while i < len(xs) and xs[i] <= x:
            i += 1
        while j < len(ys) and ys[j] <= x:
            j += 1
        d = max(d, abs(i / len(xs) - j / len(ys)))
    return d


def ks_critical(n: int, m: int, c_alpha: float = C_ALPHA_0001) -> float:
    """The D above which the two samples differ at the level ``c_alpha`` stands for."""
    return c_alpha * math.sqrt((n + m) / (n * m))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of D (Kolmogorov distribution, Stephens' small-sample factor)."""
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(max(0.0, min(1.0, 2 * total)))
