"""Rates and quotas: in-process buckets, and Redis shared by replicas (the real server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from gateway.limits import Limiter, MemoryLimiter, Quota, RedisLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _memory(clock: Clock) -> MemoryLimiter:
    return MemoryLimiter(clock)


def _redis(clock: Clock) -> RedisLimiter:
    return RedisLimiter(REDIS_URL, prefix=f"test:{uuid.uuid4().hex}:", clock=clock)


LIMITERS = [
    pytest.param(_memory, id="memory"),
    pytest.param(_redis, id="redis", marks=pytest.mark.redis),
]


async def _take(limiter: Limiter, quotas: list[Quota], n: int) -> list[float | None]:
    return [await limiter.acquire(quotas) for _ in range(n)]


@pytest.mark.parametrize("make", LIMITERS)
def test_per_second_limit_refuses_the_eleventh_call_and_says_when(
    make: Callable[[Clock], Limiter],
) -> None:
    clock = Clock()

    async def run() -> None:
        limiter = make(clock)
        try:
            quota = [Quota("terms:upstream:klout", per_second=10)]
            results = await _take(limiter, quota, 11)
            assert results[:10] == [None] * 10
            assert results[10] is not None
            assert 0 < results[10] <= 1.0
            clock.now += 1.01
            assert await limiter.acquire(quota) is None
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.parametrize("make", LIMITERS)
def test_daily_quota_holds_until_utc_midnight(make: Callable[[Clock], Limiter]) -> None:
    clock = Clock(86400 * 20000 + 3600)  # 01:00 UTC

    async def run() -> None:
        limiter = make(clock)
        try:
            quota = [Quota("client:crm", per_day=3)]
            assert await _take(limiter, quota, 3) == [None, None, None]
            wait = await limiter.acquire(quota)
            assert wait is not None
            assert abs(wait - 23 * 3600) < 2
            clock.now += 23 * 3600 + 1
            assert await limiter.acquire(quota) is None
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.parametrize("make", LIMITERS)
def test_a_refused_call_takes_from_no_quota(make: Callable[[Clock], Limiter]) -> None:
    """All or nothing: the client quota is not spent when the upstream's refuses."""
    clock = Clock()

    async def run() -> None:
        limiter = make(clock)
        try:
            tight = Quota("upstream:klout", per_day=1)
            loose = Quota("client:crm", per_day=2)
            assert await limiter.acquire([tight, loose]) is None
            assert await limiter.acquire([tight, loose]) is not None
            assert await limiter.acquire([loose]) is None
            assert await limiter.acquire([loose]) is not None
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.redis
def test_two_replicas_share_one_redis_quota() -> None:
    clock = Clock()
    prefix = f"test:{uuid.uuid4().hex}:"

    async def run() -> None:
        a = RedisLimiter(REDIS_URL, prefix=prefix, clock=clock)
        b = RedisLimiter(REDIS_URL, prefix=prefix, clock=clock)
        try:
            quota = [Quota("terms:upstream:klout", per_day=4)]
            results = [await (a if i % 2 else b).acquire(quota) for i in range(6)]
            assert results[:4] == [None] * 4
            assert all(r is not None for r in results[4:])
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_workers_without_redis_each_hold_their_share_of_a_limit() -> None:
    """Two worker processes with in-process buckets never exceed the vendor's rate
    together: each takes half of it."""
    clock = Clock()

    async def run() -> None:
        workers = [MemoryLimiter(clock, share=2), MemoryLimiter(clock, share=2)]
        quota = [Quota("terms:upstream:klout", per_second=10, per_day=100)]
        allowed = [await w.acquire(quota) is None for w in workers for _ in range(10)]
        assert sum(allowed) == 10
        for _ in range(30):
            clock.now += 1
            for w in workers:
                for _ in range(10):
                    await w.acquire(quota)
        left = [await w.acquire(quota) is None for w in workers for _ in range(10)]
        assert not any(left)  # 2 x 50 a day, all spent

    asyncio.run(run())
