"""Rates and quotas held before an upstream is called (``limit`` rules, vendor terms).

Two implementations of one small interface: in-process token buckets for a single
gateway, and Redis for several replicas sharing a vendor's quota. ``acquire``
either takes one call from every named limit or takes none, and says how long to
wait when it refuses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec


class Quota(msgspec.Struct, frozen=True):
    """``key`` names whose budget this is (``upstream:klout``, ``client:crm``)."""

    key: str
    per_second: float | None = None
    per_day: int | None = None


class Limiter(Protocol):
    async def acquire(self, quotas: Sequence[Quota]) -> float | None:
        """Take one call from each quota, or none; ``None`` when allowed, else seconds to wait."""

    async def ping(self) -> bool:
        """Whether the limiter answers (for /readyz); never raises."""

    async def close(self) -> None: ...


def _seconds_to_utc_midnight(now: float) -> float:
    return 86400 - (now % 86400)


class MemoryLimiter:
    """Token bucket per second (burst = one second's worth) and a counter per UTC day.

    ``share`` splits every limit between that many worker processes, each holding
    its own part, so ``--workers N`` without Redis never exceeds a vendor's terms
    (at the cost of refusing early when the load is uneven; use Redis to share).
    """

    def __init__(self, clock: Callable[[], float] = time.time, *, share: int = 1) -> None:
        self._clock = clock
        self._share = max(1, share)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._days: dict[str, tuple[int, int]] = {}  # key -> (utc day, count)

    async def acquire(self, quotas: Sequence[Quota]) -> float | None:
        now = self._clock()
        day = int(now // 86400)
        wait = 0.0
        refills: list[tuple[str, float]] = []
        share = self._share
        for q in quotas:
            if q.per_second is not None:
                rate = q.per_second / share
                tokens, last = self._buckets.get(q.key, (rate, now))
                tokens = min(max(rate, 1.0), tokens + (now - last) * rate)
                if tokens < 1.0:
                    wait = max(wait, (1.0 - tokens) / rate)
                refills.append((q.key, tokens))
            if q.per_day is not None:
                seen_day, count = self._days.get(q.key, (day, 0))
                if seen_day == day and count >= q.per_day // share:
                    wait = max(wait, _seconds_to_utc_midnight(now))
        if wait > 0:
            return wait
        for key, tokens in refills:
            self._buckets[key] = (tokens - 1.0, now)
        for q in quotas:
            if q.per_day is not None:
                seen_day, count = self._days.get(q.key, (day, 0))
                self._days[q.key] = (day, count + 1 if seen_day == day else 1)
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# Atomic check-and-take over all quotas: a sliding one-second window (sorted set)
# and a per-UTC-day counter. KEYS: per quota two keys (window, day). ARGV: now_ms,
# then per quota (per_second or -1, per_day or -1, day_ttl_seconds), then a
# unique member id.
_REDIS_SCRIPT = """
local now = tonumber(ARGV[1])
local n = #KEYS / 2
local wait = 0
for i = 1, n do
  local ps = tonumber(ARGV[1 + (i - 1) * 3 + 1])
  local pd = tonumber(ARGV[1 + (i - 1) * 3 + 2])
  local win, day = KEYS[2 * i - 1], KEYS[2 * i]
  if ps > 0 then
    redis.call('ZREMRANGEBYSCORE', win, 0, now - 1000)
    local count = redis.call('ZCARD', win)
    if count >= math.ceil(ps) then
      local oldest = redis.call('ZRANGE', win, 0, 0, 'WITHSCORES')
      local w = (tonumber(oldest[2]) + 1000 - now) / 1000
      if w > wait then wait = w end
    end
  end
  if pd > 0 then
    local used = tonumber(redis.call('GET', day) or '0')
    if used >= pd then
      local w = tonumber(ARGV[1 + (i - 1) * 3 + 3])
      if w > wait then wait = w end
    end
  end
end
if wait > 0 then return tostring(wait) end
local member = ARGV[#ARGV]
for i = 1, n do
  local ps = tonumber(ARGV[1 + (i - 1) * 3 + 1])
  local pd = tonumber(ARGV[1 + (i - 1) * 3 + 2])
  if ps > 0 then
    redis.call('ZADD', KEYS[2 * i - 1], now, member)
    redis.call('PEXPIRE', KEYS[2 * i - 1], 2000)
  end
  if pd > 0 then
    redis.call('INCR', KEYS[2 * i])
    redis.call('EXPIRE', KEYS[2 * i], math.floor(tonumber(ARGV[1 + (i - 1) * 3 + 3])) + 60)
  end
end
return false
"""


class RedisLimiter:
    """Quotas shared by every replica through one Redis (``--redis-url``)."""

    def __init__(
        self, url: str, *, prefix: str = "gateway:limit:", clock: Callable[[], float] = time.time
    ) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self._script = self._redis.register_script(_REDIS_SCRIPT)
        self._prefix = prefix
        self._clock = clock
        self._counter = 0

    async def acquire(self, quotas: Sequence[Quota]) -> float | None:
        if not quotas:
            return None
        now = self._clock()
        day = int(now // 86400)
        keys: list[str] = []
        args: list[str | int | float] = [int(now * 1000)]
        for q in quotas:
            keys += [f"{self._prefix}{q.key}:w", f"{self._prefix}{q.key}:d{day}"]
            args += [
                q.per_second if q.per_second is not None else -1,
                q.per_day if q.per_day is not None else -1,
                math.ceil(_seconds_to_utc_midnight(now)),
            ]
        self._counter += 1
        args.append(f"{now:.6f}:{id(self)}:{self._counter}")
        result = await self._script(keys=keys, args=args)
        return None if result is None else float(result)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:  # noqa: BLE001  # any failure means "not ready"
            return False

    async def close(self) -> None:
        await self._redis.aclose()
