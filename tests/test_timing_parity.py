"""Timing parity: objected people cannot be told from missing ones by response time.

End to end, as a caller sees it: the real gateway in front of the real simulator
with a log-normal ~30 ms latency, 1,000 interleaved lookups per class, compared
with a two-sample Kolmogorov-Smirnov test at alpha = 0.001. The negative control
switches parity off (local answers then wait a fixed 5 ms +-25%) and must be told
apart by the same test, so the test has the power to see a difference.
Twenty repeats with their pass rate: bench/timing_parity.py.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import httpx

from tests.support.gateway import SHIPPED_POLICY
from tests.support.timing import (
    CLASSES,
    ks_critical,
    ks_pvalue,
    ks_statistic,
    measure,
    timing_gateway,
)


def test_objected_and_missing_have_the_same_time_distribution(tmp_path: Path) -> None:
    with timing_gateway(tmp_path) as gw:
        times = measure(gw.url, per_class=1000)
    missing, objected = times["missing"], times["objected"]
    d = ks_statistic(missing, objected)
    p = ks_pvalue(d, len(missing), len(objected))
    assert d < ks_critical(len(missing), len(objected)), (
        f"D={d:.3f} p={p:.2g} medians {statistics.median(missing) * 1000:.1f} ms "
        f"vs {statistics.median(objected) * 1000:.1f} ms"
    )


def test_negative_control_without_parity_is_told_apart(tmp_path: Path) -> None:
    """With parity off the same test sees the difference (it has the power to)."""
    with timing_gateway(tmp_path, parity=False) as gw:
        times = measure(gw.url, per_class=200, warmup=20)
    missing, objected = times["missing"], times["objected"]
    d = ks_statistic(missing, objected)
    assert d >= ks_critical(len(missing), len(objected)), f"D={d:.3f}"


def test_observed_times_survive_a_policy_reload(tmp_path: Path) -> None:
    """Right after a policy change, objected answers still take vendor-like times
    (they used to fall back to a fixed 20 ms on every reload)."""
    with timing_gateway(tmp_path) as gw:
        measure(gw.url, per_class=20, warmup=100)
        runtime = gw.state.runtime
        assert runtime is not None
        before = gw.state.policy.current.version  # type: ignore[union-attr]
        policy = tmp_path / "policies.yaml"
        policy.write_text(policy.read_text().replace("score: 40\n", "score: 41\n"))
        deadline = time.monotonic() + 5
        while gw.state.policy.current.version == before:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the changed policy was not loaded"
            time.sleep(0.05)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            local = []
            for _ in range(40):
                started = time.perf_counter()
                assert c.get(CLASSES["objected"]).status_code == 200
                local.append(time.perf_counter() - started)
        assert statistics.median(local) > 0.020, statistics.median(local)
    assert SHIPPED_POLICY.read_text().count("score: 40\n") == 1
