"""The identity graph's tables on a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from gateway.audit.graph import IdentityStore, PseudonymKeyMismatch
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.store import AuditStore

P = Pseudonymizer(b"k" * 32)


def ps(namespace: str, identifier: str) -> str:
    return P.pseudonym(namespace, identifier)


BOB_NAME = ps("twitter_screen_name", "bob_example")
BOB_TW = ps("twitter_id", "1002")
BOB_KLOUT = ps("klout_id", "5002")
ALICE_KLOUT = ps("klout_id", "5001")


@pytest.fixture(params=["sqlite", "postgresql"])
def graph(request: pytest.FixtureRequest) -> IdentityStore:
    store: AuditStore = request.getfixturevalue(
        "store" if request.param == "sqlite" else "pg_store"
    )
    g = IdentityStore(store.engine)
    g.create()
    return g


def test_links_merge_two_people_into_one(graph: IdentityStore) -> None:
    """A link between members of two people makes one person of all their identifiers."""
    first = graph.link([BOB_NAME, BOB_KLOUT])
    second = graph.link([BOB_TW, ps("instagram_id", "3002")])
    assert first.person != second.person
    merged = graph.link([BOB_KLOUT, BOB_TW])
    assert merged.identifiers == 4
    assert merged.merged == 1
    assert sorted(graph.members_of(BOB_NAME)) == sorted(
        [BOB_NAME, BOB_KLOUT, BOB_TW, ps("instagram_id", "3002")]
    )
    assert graph.members_of(ALICE_KLOUT) == [ALICE_KLOUT]


def test_an_objection_covers_identifiers_linked_before_and_after(graph: IdentityStore) -> None:
    """Objecting by one identifier covers every identifier of that person, and ones
    linked later; a different person stays unobjected."""
    graph.link([BOB_NAME, BOB_KLOUT])
    linked = graph.object([BOB_NAME], time="2026-12-01T20:00:00.000000Z", actor="cli:test")
    assert linked.objected
    assert linked.identifiers == 2
    graph.link([BOB_TW, BOB_KLOUT])
    changes = graph.changes(-1)
    persons = dict(changes.members)
    objected_people = {persons[p] for p in changes.objections}
    assert {p for p, person in changes.members if person in objected_people} == {
        BOB_NAME,
        BOB_KLOUT,
        BOB_TW,
    }
    assert graph.link([ALICE_KLOUT, ps("twitter_id", "1001")]).objected is False


def test_objections_list_and_withdraw_by_any_identifier(graph: IdentityStore) -> None:
    """The list shows pseudonyms and counts; withdrawing by any linked identifier
    removes the person's whole objection and keeps the links."""
    graph.object([BOB_NAME, BOB_TW], time="2026-12-01T20:00:00.000000Z", actor="cli:a")
    graph.link([BOB_TW, BOB_KLOUT])
    (entry,) = graph.objections()
    assert entry.given == tuple(sorted([BOB_NAME, BOB_TW]))
    assert entry.identifiers == 3
    assert entry.actor == "cli:a"
    people, named = graph.withdraw([BOB_KLOUT])
    assert people == 1
    assert sorted(named) == sorted([BOB_NAME, BOB_TW])
    assert graph.objections() == []
    assert len(graph.members_of(BOB_NAME)) == 3


def test_refresh_reads_only_newer_rows(graph: IdentityStore) -> None:
    graph.link([BOB_NAME, BOB_KLOUT])
    rev = graph.rev()
    assert graph.changes(rev).members == []
    graph.link([BOB_TW, BOB_KLOUT])
    assert [p for p, _ in graph.changes(rev).members] == [BOB_TW]


def _candidates(values: list[str]) -> Callable[[int], tuple[str, int]]:
    def candidate(nonce: int) -> tuple[str, int]:
        value = values[nonce % len(values)]
        return ps("klout_id", value), len(value)

    return candidate


def test_an_issued_id_never_collides_with_a_forwarded_one(graph: IdentityStore) -> None:
    """An id claimed as real is skipped when issuing; an issued id is reported as
    issued to anyone about to forward it."""
    assert graph.claim_real(ps("klout_id", "5001"), "klout_id", 4) == "real"
    issued = graph.issue(
        "klout_id", ps("twitter_id", "1999"), _candidates(["5001", "5007"]), attempts=4
    )
    assert issued.pseudonym == ps("klout_id", "5007")
    assert issued.nonce == 1
    assert graph.claim_real(ps("klout_id", "5007"), "klout_id", 4) == "issued"
    assert graph.lengths() == {"klout_id": {4: 1}}


def test_claims_in_one_batch_settle_each_id_once(graph: IdentityStore) -> None:
    """A batch mixing an issued id, an id already real, new ids and a repeat: each
    gets its kind, and only the new ones are added (their lengths counted once)."""
    graph.claim_real(ps("klout_id", "5001"), "klout_id", 4)
    issued = graph.issue("klout_id", ps("twitter_id", "1999"), _candidates(["5007"]))
    new = [ps("klout_id", str(n)) for n in range(60000, 60600)]  # more than one IN chunk
    claims = [
        (issued.pseudonym, "klout_id", 4),
        (ps("klout_id", "5001"), "klout_id", 4),
        *[(p, "klout_id", 5) for p in new],
        (new[0], "klout_id", 5),
    ]
    kinds = graph.claim_real_many(claims)
    assert kinds[issued.pseudonym] == "issued"
    assert kinds[ps("klout_id", "5001")] == "real"
    assert all(kinds[p] == "real" for p in new)
    assert len(kinds) == 602
    assert graph.lengths() == {"klout_id": {4: 1, 5: 600}}
    assert graph.claim_real_many(claims) == kinds  # settled: a read, the same answer


def test_lengths_are_counted_once_per_id_across_replicas(graph: IdentityStore) -> None:
    """Two replicas claiming overlapping ids at once: every real id counts once in
    the lengths, whichever replica inserted it, and issued ids never count."""
    other = IdentityStore(graph.engine)  # a second replica on the same database
    ids = [ps("klout_id", str(n)) for n in range(70000, 70400)]
    issued = graph.issue("klout_id", ps("twitter_id", "1999"), _candidates(["123456"]))
    errors: list[BaseException] = []

    def claim(store: IdentityStore, chunk: list[str]) -> None:
        try:
            for start in range(0, len(chunk), 50):
                store.claim_real_many([(p, "klout_id", 5) for p in chunk[start : start + 50]])
        except BaseException as exc:  # noqa: BLE001  # reported below, on the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=claim, args=(graph, ids[:300])),
        threading.Thread(target=claim, args=(other, ids[100:])),  # 200 ids in common
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert graph.claim_real(issued.pseudonym, "klout_id", 6) == "issued"
    assert graph.lengths() == other.lengths() == {"klout_id": {5: 400}}


def test_a_store_from_before_the_length_counts_is_counted_once(graph: IdentityStore) -> None:
    """A store whose ids were claimed before ``identity_length`` existed: the first
    gateway to open it counts them, later openings do not count them again, and new
    claims add to the counts."""
    graph.claim_real_many([(ps("klout_id", str(n)), "klout_id", 4) for n in range(1000, 1030)])
    graph.claim_real(ps("twitter_id", "12345678"), "twitter_id", 8)
    graph.issue("klout_id", ps("twitter_id", "1999"), _candidates(["9999"]))
    with graph.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE identity_length")  # as an older release left it
    IdentityStore(graph.engine).create()
    assert graph.lengths() == {"klout_id": {4: 30}, "twitter_id": {8: 1}}
    IdentityStore(graph.engine).create()  # a restart
    graph.claim_real(ps("klout_id", "77777"), "klout_id", 5)
    assert graph.lengths() == {"klout_id": {4: 30, 5: 1}, "twitter_id": {8: 1}}


def test_one_person_gets_one_neutral_id_whichever_identifier_is_asked(
    graph: IdentityStore,
) -> None:
    carol_tw, carol_name = ps("twitter_id", "1003"), ps("twitter_screen_name", "carol_optedout")
    graph.link([carol_tw, carol_name])
    first = graph.issue("klout_id", carol_tw, _candidates(["7001"]))
    again = graph.issue("klout_id", carol_name, _candidates(["7002"]))
    assert again == first
    assert first.pseudonym in graph.members_of(carol_name)  # the id stands for carol


def test_no_free_id_is_a_store_error_not_a_collision(graph: IdentityStore) -> None:
    from gateway.audit.store import StoreError

    graph.claim_real(ps("klout_id", "5001"), "klout_id", 4)
    with pytest.raises(StoreError, match="no free neutral id"):
        graph.issue("klout_id", BOB_TW, _candidates(["5001"]), attempts=3)


def test_concurrent_links_end_in_one_person(graph: IdentityStore) -> None:
    """Writers racing on overlapping links (two replicas) leave one consistent person."""
    chain = [ps("twitter_id", str(1000 + i)) for i in range(12)]
    threads = [
        threading.Thread(target=graph.link, args=([chain[i], chain[i + 1]],))
        for i in range(len(chain) - 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(graph.members_of(chain[0])) == sorted(chain)


def test_a_store_written_under_another_key_is_refused(graph: IdentityStore) -> None:
    graph.bind_key(P.check_value())
    graph.bind_key(P.check_value())  # the same key again is fine
    other = Pseudonymizer(b"o" * 32)
    with pytest.raises(PseudonymKeyMismatch, match="another pseudonym key"):
        graph.bind_key(other.check_value())
