"""The optional answer cache: bounded by the vendor's cache age, honouring later changes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import msgspec

from gateway.audit.pseudonym import Pseudonymizer
from gateway.cache import AnswerCache
from gateway.upstreams.base import UpstreamAnswer
from tests.support.gateway import SHIPPED_POLICY, running_gateway

ANSWER = UpstreamAnswer(status=200, content_type="application/json", body=b'{"score":71.3}')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_at_the_shorter_of_the_terms_and_the_operator_limit() -> None:
    clock = Clock()
    cache = AnswerCache(max_entries=10, max_age=3600, clock=clock)
    key = cache.key("klout", "/v2/user.json/1/score", [])
    cache.put(key, ANSWER)
    clock.now += 59
    assert cache.get(key, terms_max_age=60) is not None
    clock.now += 1
    assert cache.get(key, terms_max_age=60) is None  # the vendor's limit, not ours
    cache.put(key, ANSWER)
    clock.now += 3600
    assert cache.get(key, terms_max_age=7 * 86400) is None  # ours is shorter


def test_the_cache_is_bounded_in_entries_and_bytes() -> None:
    cache = AnswerCache(max_entries=3, max_bytes=16 * 64)
    for i in range(10):
        cache.put(cache.key("u", f"/{i}", []), ANSWER)
    assert len(cache) == 3
    big = msgspec.structs.replace(ANSWER, body=b"x" * 100)
    cache.put(cache.key("u", "/big", []), big)  # larger than a sixteenth of the budget
    assert cache.get(cache.key("u", "/big", []), None) is None


def _lookups(records: list[dict[str, object]], request_id: str) -> list[dict[str, object]]:
    return [r for r in records if r["request_id"] == request_id]


def test_a_hit_skips_the_upstream_and_is_still_audited(tmp_path: Path) -> None:
    with running_gateway(tmp_path, cache_entries=100) as gw, httpx.Client(base_url=gw.url) as c:
        first = c.get("/klout/v2/user.json/5001", params={"key": "demo-crm-key"})
        calls = len(gw.upstream.received)
        second = c.get("/klout/v2/user.json/5001", params={"key": "demo-crm-key"})
        coarse = c.get("/klout/v2/user.json/5001", params={"key": "demo-support-key"})
        assert len(gw.upstream.received) == calls
        assert first.content == second.content
        # The decision runs again on a hit: the support desk still gets the band only.
        assert coarse.json()["score"] == {"score": 70.0, "bucket": "70-79"}
        export = c.get("/admin/audit/export", headers={"Authorization": "Bearer demo-admin-token"})
    lines = [msgspec.json.decode(line) for line in export.content.splitlines()]
    records = [line["record"] for line in lines if line["type"] == "record"]
    hit = _lookups(records, second.headers["x-request-id"])
    assert [r["kind"] for r in hit] == ["lookup"]  # no intent: the upstream was not asked
    assert str(hit[0]["detail"]).startswith("cache hit")
    assert hit[0]["outcome"] == "found"


def test_a_later_objection_wins_over_a_cached_answer(tmp_path: Path) -> None:
    data = tmp_path / "var"
    policy = tmp_path / "policies.yaml"
    policy.write_text(SHIPPED_POLICY.read_text())
    with (
        running_gateway(data, policies=policy, cache_entries=100) as gw,
        httpx.Client(base_url=gw.url) as c,
    ):
        real = c.get("/klout/v2/user.json/5002/score", params={"key": "demo-crm-key"})
        assert real.json()["score"] == 23.4
        pseudonym = Pseudonymizer.load_or_create(data).pseudonym("klout_id", "5002")
        policy.write_text(
            policy.read_text().replace("\nobjections: []", f"\nobjections:\n  - {pseudonym}")
        )
        holder = gw.state.policy
        assert holder is not None
        deadline = time.monotonic() + 5
        while pseudonym not in holder.current.objections:  # hot reload polls every 0.1 s
            assert time.monotonic() < deadline, "the changed policy was not loaded"
            time.sleep(0.02)
        calls = len(gw.upstream.received)
        after = c.get("/klout/v2/user.json/5002/score", params={"key": "demo-crm-key"})
        assert after.json()["score"] == 40.0
        assert len(gw.upstream.received) == calls
