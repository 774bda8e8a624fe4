"""A person is the unit: objections follow every linked identifier; neutral ids look real.

Every test runs the real gateway and the real simulator on loopback and reads the
simulator's log of received requests (``upstream.received``) to prove what never
reached the vendor.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import httpx
import pytest

from gateway.audit.graph import IdentityStore
from gateway.audit.pseudonym import Pseudonymizer
from gateway.identity import IdentityGraph
from tests.support.gateway import SHIPPED_POLICY, RunningGateway, running_gateway

CRM = {"key": "demo-crm-key"}
NEUTRAL_SCORE = 40.0


def _pseudonym(gw: RunningGateway, namespace: str, identifier: str) -> str:
    assert gw.state.pseudonyms is not None
    return gw.state.pseudonyms.pseudonym(namespace, identifier)


def _graph(gw: RunningGateway) -> IdentityStore:
    assert gw.state.store is not None
    return IdentityStore(gw.state.store.engine)


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what} within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


def _object(gw: RunningGateway, *pseudonyms: str) -> None:
    _graph(gw).object(list(pseudonyms), time="2026-12-01T20:00:00.000000Z", actor="test")


def _received_since(gw: RunningGateway, mark: int) -> list[str]:
    return [f"{r.path}?{r.query_string}" for r in list(gw.upstream.received)[mark:]]


def _link_bob(gw: RunningGateway, c: httpx.Client) -> None:
    """Ordinary traffic shows that bob_example, Twitter id 1002 and kloutId 5002 are one."""
    by_name = c.get("/klout/v2/identity.json/twitter", params={**CRM, "screenName": "bob_example"})
    by_id = c.get("/klout/v2/identity.json/tw/1002", params=CRM)
    assert by_name.json()["id"] == by_id.json()["id"] == "5002"
    name = _pseudonym(gw, "twitter_screen_name", "bob_example")
    _wait_for(lambda: len(_graph(gw).members_of(name)) == 3, 5, "the links are stored")


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path / "var") as running:
        yield running


def test_an_objection_by_one_identifier_covers_every_linked_one(gw: RunningGateway) -> None:
    """bob is objected by his screen name only; his Twitter id and kloutId, linked by
    earlier answers, are answered neutral too and never reach the vendor again."""
    with httpx.Client(base_url=gw.url) as c:
        _link_bob(gw, c)
        _object(gw, _pseudonym(gw, "twitter_screen_name", "bob_example"))
        time.sleep(1.0)  # the promise: in force on every replica within a second
        mark = len(gw.upstream.received)
        by_id = c.get("/klout/v2/identity.json/tw/1002", params=CRM)
        by_name = c.get(
            "/klout/v2/identity.json/twitter", params={**CRM, "screenName": "bob_example"}
        )
        score = c.get("/klout/v2/user.json/5002/score", params=CRM)
        user = c.get("/klout/v2/user.json/5002", params=CRM)
        reverse = c.get("/klout/v2/identity.json/klout/5002/tw", params=CRM)
        v1 = c.get("/klout/1/klout.json", params={**CRM, "users": "bob_example"})
    assert by_id.status_code == by_name.status_code == 200
    assert by_id.json()["id"] == by_name.json()["id"] != "5002"  # one neutral id per person
    assert score.json()["score"] == NEUTRAL_SCORE
    assert user.json()["score"]["score"] == NEUTRAL_SCORE
    assert reverse.json()["id"] != "1002"
    assert v1.json()["users"][0]["kscore"] == NEUTRAL_SCORE
    sent = _received_since(gw, mark)
    assert not [r for r in sent if "1002" in r or "5002" in r or "bob_example" in r]


def test_an_answer_revealing_an_objected_persons_identifier_is_neutralized_and_linked(
    gw: RunningGateway,
) -> None:
    """Only bob_example and 5002 are known to be bob when he objects. A lookup of
    Twitter id 1002 must still ask the vendor (nobody could know), but its answer
    reveals kloutId 5002: the caller gets bob's neutral id, and 1002 is bob's from now on."""
    with httpx.Client(base_url=gw.url) as c:
        c.get("/klout/v2/identity.json/twitter", params={**CRM, "screenName": "bob_example"})
        name = _pseudonym(gw, "twitter_screen_name", "bob_example")
        _wait_for(lambda: len(_graph(gw).members_of(name)) == 2, 5, "the link is stored")
        _object(gw, name)
        time.sleep(1.0)
        by_name = c.get(
            "/klout/v2/identity.json/twitter", params={**CRM, "screenName": "bob_example"}
        )
        first = c.get("/klout/v2/identity.json/tw/1002", params=CRM)
        assert first.status_code == 200
        assert first.json()["id"] != "5002"
        assert first.json() == by_name.json()  # still one neutral id for bob
        tw = _pseudonym(gw, "twitter_id", "1002")
        _wait_for(lambda: tw in _graph(gw).members_of(name), 5, "1002 is linked to bob")
        mark = len(gw.upstream.received)
        again = c.get("/klout/v2/identity.json/tw/1002", params=CRM)
    assert again.json() == first.json()
    assert _received_since(gw, mark) == []


def test_an_objection_in_the_store_holds_within_a_second_without_a_reload(
    gw: RunningGateway,
) -> None:
    """No restart, no policy reload, no policy test run: the store is read every 0.25 s."""
    version = gw.state.policy.current.version if gw.state.policy else None
    with httpx.Client(base_url=gw.url) as c:
        assert c.get("/klout/v2/user.json/5001/score", params=CRM).json()["score"] == 71.3
        _object(gw, _pseudonym(gw, "klout_id", "5001"))
        took = _wait_for(
            lambda: (
                c.get("/klout/v2/user.json/5001/score", params=CRM).json()["score"] == NEUTRAL_SCORE
            ),
            1.0,
            "the objection holds",
        )
    assert took < 1.0
    assert gw.state.policy is not None
    assert gw.state.policy.current.version == version


def test_neutral_ids_have_the_shape_of_real_ones_and_one_per_person(gw: RunningGateway) -> None:
    """After real kloutIds (4 digits in the simulator) passed, neutral ones have 4
    digits too; carol, objected by staff under two identifiers, gets one neutral id
    whichever is asked; a never-existing person gets another."""
    with httpx.Client(base_url=gw.url) as c:
        real = c.get("/klout/v2/identity.json/tw/1001", params=CRM).json()["id"]
        c.get(f"/klout/v2/user.json/{real}/score", params=CRM)
        _object(
            gw,
            _pseudonym(gw, "twitter_screen_name", "carol_optedout"),
            _pseudonym(gw, "twitter_id", "1003"),
        )
        time.sleep(0.5)
        by_name = c.get(
            "/klout/v2/identity.json/twitter", params={**CRM, "screenName": "carol_optedout"}
        ).json()["id"]
        by_id = c.get("/klout/v2/identity.json/tw/1003", params=CRM).json()["id"]
        nobody = c.get("/klout/v2/identity.json/tw/1999", params=CRM).json()["id"]
    assert by_name == by_id
    assert nobody != by_id
    for neutral in (by_id, nobody):
        assert len(neutral) == len(real)
        assert neutral.isdigit()
        assert neutral[0] != "0"


def test_a_neutral_id_is_never_forwarded_and_its_reverse_lookup_is_stable(
    tmp_path: Path,
) -> None:
    """Two gateways on one store (two replicas): an id issued by one is answered
    locally by the other at once; the reverse lookup gives the same Twitter id on
    both, every time, and that Twitter id is itself never forwarded."""
    data_dir = tmp_path / "var"
    with (
        running_gateway(data_dir) as a,
        running_gateway(data_dir) as b,
        httpx.Client(base_url=a.url) as ca,
        httpx.Client(base_url=b.url) as cb,
    ):
        neutral = ca.get("/klout/v2/identity.json/tw/1999", params=CRM).json()["id"]
        mark_a, mark_b = len(a.upstream.received), len(b.upstream.received)
        score = cb.get(f"/klout/v2/user.json/{neutral}/score", params=CRM)
        reverse = [
            client.get(f"/klout/v2/identity.json/klout/{neutral}/tw", params=CRM).json()
            for client in (ca, cb, ca, cb)
        ]
        invented = reverse[0]["id"]
        back = cb.get(f"/klout/v2/identity.json/tw/{invented}", params=CRM).json()["id"]
        sent = _received_since(a, mark_a) + _received_since(b, mark_b)
    assert score.json()["score"] == NEUTRAL_SCORE
    assert all(r == reverse[0] for r in reverse)
    assert back == neutral  # the invented Twitter id leads back to the same person
    assert not [r for r in sent if neutral in r or invented in r]


def test_the_policy_files_objection_list_still_counts_and_follows_links(tmp_path: Path) -> None:
    """Objections written into policies.yaml by earlier versions are read as before,
    and cover identifiers linked to them."""
    data_dir = tmp_path / "var"
    name = Pseudonymizer.load_or_create(data_dir).pseudonym("twitter_screen_name", "bob_example")
    text = SHIPPED_POLICY.read_text()
    policy = tmp_path / "policies.yaml"
    policy.write_text(text.replace("\nobjections: []", f"\nobjections:\n  - {name}"))
    with running_gateway(data_dir, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        # What cannot be known: nothing links 1002 or 5002 to bob_example yet.
        first = c.get("/klout/v2/identity.json/tw/1002", params=CRM)
        assert first.json()["id"] == "5002"
        # The user object's nick reveals that 5002 is bob_example: neutralized, linked.
        user = c.get("/klout/v2/user.json/5002", params=CRM)
        assert user.json()["score"]["score"] == NEUTRAL_SCORE
        kid = _pseudonym(gw, "klout_id", "5002")
        _wait_for(lambda: name in _graph(gw).members_of(kid), 5, "5002 is linked to bob")
        time.sleep(0.5)
        mark = len(gw.upstream.received)
        score = c.get("/klout/v2/user.json/5002/score", params=CRM)
        again = c.get("/klout/v2/identity.json/tw/1002", params=CRM)
    assert score.json()["score"] == NEUTRAL_SCORE
    assert again.json()["id"] != "5002"
    assert _received_since(gw, mark) == []


# -- the graph alone, on a real SQLite store ----------------------------------------------


def _graph_pair(tmp_path: Path) -> tuple[IdentityStore, Pseudonymizer]:
    from gateway.audit.store import AuditStore

    store = AuditStore.open(data_dir=tmp_path)
    graph = IdentityStore(store.engine)
    graph.create()
    return graph, Pseudonymizer(b"s" * 32)


def test_two_replicas_issue_the_same_neutral_id_shaped_like_the_real_ones(tmp_path: Path) -> None:
    """Replicas sharing a store and a key give a person one neutral id, with the
    length real ids had; no issued id is one that was forwarded."""
    store, pseudonyms = _graph_pair(tmp_path)
    for real in ("5001", "5002", "5003"):
        store.claim_real(pseudonyms.pseudonym("klout_id", real), "klout_id", len(real))
    owner = pseudonyms.pseudonym("twitter_id", "1999")

    async def run() -> tuple[str, str]:
        a, b = IdentityGraph(store, pseudonyms), IdentityGraph(store, pseudonyms)
        await a.start()
        await b.start()
        try:
            first = await a.neutral_id("klout_id", owner, (18, 18))
            await b.refresh()
            issued = pseudonyms.pseudonym("klout_id", first)
            assert b.is_issued_known(issued) is True
            return first, await b.neutral_id("klout_id", owner, (18, 18))
        finally:
            await a.close()
            await b.close()

    first, second = asyncio.run(run())
    assert first == second
    assert len(first) == 4
    assert first not in ("5001", "5002", "5003")


def test_neutral_id_digits_are_uniform(tmp_path: Path) -> None:
    """No digit is likelier than another (a biased digit would mark neutral ids)."""
    store, pseudonyms = _graph_pair(tmp_path)
    graph = IdentityGraph(store, pseudonyms)
    counts = Counter(
        digit for n in range(3000) for digit in graph._value(f"owner-{n}", "klout_id", 0, 5)[1:]
    )
    assert set(counts) == set("0123456789")
    assert max(counts.values()) - min(counts.values()) < 250  # 1200 each; sd about 33
    leading = Counter(graph._value(f"owner-{n}", "klout_id", 0, 5)[0] for n in range(2700))
    assert set(leading) == set("123456789")


def test_a_link_to_an_objected_person_objects_at_once_and_the_policy_list_expands(
    tmp_path: Path,
) -> None:
    """Linking a new identifier to an objected person objects it on this replica
    before the link is even stored; the policy file's list covers linked ids too."""
    store, pseudonyms = _graph_pair(tmp_path)
    p = [pseudonyms.pseudonym("twitter_id", str(n)) for n in range(1, 6)]
    store.object([p[0]], time="2026-12-01T20:00:00.000000Z", actor="test")
    store.link([p[3], p[4]])

    async def run() -> None:
        graph = IdentityGraph(store, pseudonyms, static_objections=lambda: frozenset({p[3]}))
        await graph.start()
        try:
            assert graph.is_objected(p[0])
            assert not graph.is_objected(p[1])
            assert graph.learn([[p[0], p[1]], [p[2]]]) == [True, False]
            assert graph.is_objected(p[1])  # before the link reaches the store
            assert not graph.is_objected(p[2])
            assert graph.is_objected(p[4])  # linked to a policy-file objection
            await graph.flush()
            assert p[1] in store.members_of(p[0])
            assert graph.is_objected(p[1])
        finally:
            await graph.close()

    asyncio.run(run())


def test_a_length_seen_before_its_claim_is_stored_survives_a_refresh(tmp_path: Path) -> None:
    """A real kloutId seen in an answer shapes the next neutral ids at once, even when
    a refresh of the stored lengths comes before its claim is written (the first
    neutral id of a person is theirs for good, so it must not take the default)."""
    store, pseudonyms = _graph_pair(tmp_path)
    owner = pseudonyms.pseudonym("twitter_screen_name", "carol_optedout")

    async def run() -> str:
        graph = IdentityGraph(store, pseudonyms, lengths_interval=0.0)
        await graph.start()
        writer = next(t for t in graph._tasks if t.get_name() == "identity-links")
        writer.cancel()  # the claim stays queued, as in the moment after an answer
        try:
            graph.saw_real(pseudonyms.pseudonym("klout_id", "5001"), "klout_id", 4)
            await graph.refresh()  # reads the stored lengths: none yet
            assert store.lengths() == {}
            return await graph.neutral_id("klout_id", owner, (18, 18))
        finally:
            await graph.close()

    assert len(asyncio.run(run())) == 4


def test_a_forwarded_id_shapes_the_next_neutral_ids_at_once(tmp_path: Path) -> None:
    """A kloutId a caller asks for is claimed as real before it is forwarded; the
    neutral id issued right after takes its length, not the default, without
    waiting for the next read of the stored lengths."""
    store, pseudonyms = _graph_pair(tmp_path)
    owner = pseudonyms.pseudonym("twitter_screen_name", "carol_optedout")

    async def run() -> str:
        graph = IdentityGraph(store, pseudonyms, lengths_interval=3600.0)
        await graph.start()
        try:
            forwarded = pseudonyms.pseudonym("klout_id", "5001")
            assert not await graph.is_issued(forwarded, "klout_id", 4)
            return await graph.neutral_id("klout_id", owner, (18, 18))
        finally:
            await graph.close()

    assert len(asyncio.run(run())) == 4


def test_a_burst_of_new_ids_is_claimed_in_one_transaction(tmp_path: Path) -> None:
    """Ids first seen together (a CRM enriching a list) are settled in one claim
    batch, not one transaction and fsync each; a caller that goes away does not
    cancel the others' answer."""
    store, pseudonyms = _graph_pair(tmp_path)
    calls: list[int] = []
    claim_many = store.claim_real_many

    def counting(claims: Sequence[tuple[str, str, int]]) -> dict[str, Literal["real", "issued"]]:
        calls.append(len(claims))
        return claim_many(claims)

    store.claim_real_many = counting  # type: ignore[method-assign]
    ids = [pseudonyms.pseudonym("klout_id", str(n)) for n in range(6000, 6050)]

    async def run() -> list[bool]:
        graph = IdentityGraph(store, pseudonyms)
        await graph.start()
        try:
            gone = asyncio.create_task(graph.is_issued(ids[0], "klout_id", 4))
            asking = [asyncio.create_task(graph.is_issued(p, "klout_id", 4)) for p in ids]
            await asyncio.sleep(0)  # every task has asked; the batch is in flight
            gone.cancel()
            answers = await asyncio.gather(*asking)
            assert all(graph.is_issued_known(p) is False for p in ids)
            return answers
        finally:
            await graph.close()

    assert asyncio.run(run()) == [False] * 50
    assert calls == [50]
    assert store.claim_real_many([(ids[0], "klout_id", 4)]) == {ids[0]: "real"}
