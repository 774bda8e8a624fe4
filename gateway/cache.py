"""An optional cache of upstream answers, bounded by age, entries and bytes.

Only the upstream's raw answer is cached, keyed by upstream and the exact request
sent to it (path and query, credential removed). Everything that depends on who
asks and under which policy runs again on every hit: authentication, purpose,
the decision, the objection list (objected people never reach the cache), the
neutral answer, redaction and coarsening. So a new objection or a policy change
is honoured at once, and a hit is audited like any other lookup.

An entry never outlives the upstream's ``terms.max_cache_age`` (Klout: 7 days,
"How long can I cache the Klout scores locally? Seven days.") nor the operator's
own limit, whichever is shorter.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from gateway.upstreams.base import UpstreamAnswer

CacheKey = tuple[str, str, str]


class CachedAnswer(msgspec.Struct, frozen=True):
    answer: UpstreamAnswer
    stored_at: float


class AnswerCache:
    """LRU over (upstream, path, query); thread-unsafe, used from the event loop."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int = 64 * 1024 * 1024,
        max_age: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str, str], CachedAnswer] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(upstream: str, path: str, query: list[tuple[str, str]]) -> tuple[str, str, str]:
        return (upstream, path, "&".join(f"{k}={v}" for k, v in query))

    def get(self, key: tuple[str, str, str], terms_max_age: float | None) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        limit = self.max_age if terms_max_age is None else min(self.max_age, terms_max_age)
        if self._clock() - entry.stored_at >= limit:
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: tuple[str, str, str], answer: UpstreamAnswer) -> None:
        size = len(answer.body)
        if self.max_entries <= 0 or size > self.max_bytes // 16:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = CachedAnswer(answer, self._clock())
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def age(self, entry: CachedAnswer) -> float:
        return self._clock() - entry.stored_at

    def _drop(self, key: tuple[str, str, str]) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.answer.body)

    def __len__(self) -> int:
        return len(self._entries)
