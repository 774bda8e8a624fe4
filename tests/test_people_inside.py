"""People inside answers: an objected person is protected in everyone else's answers.

The real simulator's influence graph: alice lists bob as influencer and influencee
(and carol, who opted out and never appears). bob objected under every identifier
he has; he must vanish from every answer, with the counts kept consistent, and no
request about him may reach the vendor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import running_gateway
from tests.support.people import BOB, FAST_VENDOR, NO_RATE_LIMIT, policy_with_objections

CRM = {"key": "demo-crm-key"}
SUPPORT = {"key": "demo-support-key"}
MARKETING = {"key": "demo-marketing-key"}

# Every route of both API versions, about alice, about bob, and about both.
TARGETS = [
    "/klout/v2/identity.json/twitter?screenName=alice_example",
    "/klout/v2/identity.json/tw/1001",
    "/klout/v2/identity.json/klout/5001/tw",
    "/klout/v2/user.json/5001",
    "/klout/v2/user.json/5001/score",
    "/klout/v2/user.json/5001/topics",
    "/klout/v2/user.json/5001/influence",
    "/klout/1/klout.json?users=alice_example,bob_example",
    "/klout/1/users/show.json?users=alice_example,bob_example",
    "/klout/1/users/topics.json?users=alice_example",
    "/klout/1/soi/influenced_by.json?users=alice_example",
    "/klout/1/soi/influencer_of.json?users=alice_example",
    "/klout/v2/identity.json/twitter?screenName=bob_example",
    "/klout/v2/identity.json/tw/1002",
    "/klout/v2/user.json/5002/score",
    "/klout/v2/user.json/5002/influence",
    "/klout/1/soi/influenced_by.json?users=bob_example",
]
# His score, his numbers and his ids as JSON strings (a neutral 18-digit id may
# contain "5002" by chance; it never equals it).
BOB_MARKS = [
    '"kscore":23.4',
    '"score":23.4',
    '"network_score":24.1',
    "bob_example",
    '"5002"',
    '"1002"',
    '"3002"',
    "Coffee",
    "Jazz",
]


def test_an_objected_persons_score_appears_nowhere_in_any_answer(tmp_path: Path) -> None:
    """bob objected: across every route and client, no answer carries his score,
    his names or his ids, and the vendor never receives any of his identifiers."""
    data_dir = tmp_path / "var"
    policy = policy_with_objections(
        tmp_path / "policies.yaml", data_dir, BOB, replace=NO_RATE_LIMIT
    )
    with (
        running_gateway(data_dir, policies=policy, upstream_config=FAST_VENDOR) as gw,
        httpx.Client(base_url=gw.url) as c,
    ):
        for key in (CRM, SUPPORT, MARKETING):
            for target in TARGETS:
                sep = "&" if "?" in target else "?"
                r = c.get(f"{target}{sep}key={key['key']}")
                assert r.status_code == 200, (target, r.text)
                for mark in BOB_MARKS:
                    if mark == "bob_example" and "bob_example" in target:
                        continue  # the name asked is echoed back in its neutral entry
                    assert mark not in r.text, (key, target, mark)
        for seen in gw.upstream.received:
            assert not any(seen.mentions(ident) for _, ident in BOB), seen


def test_counts_are_kept_consistent_with_the_lists(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    policy = policy_with_objections(tmp_path / "policies.yaml", data_dir, BOB)
    with running_gateway(data_dir, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        doc = c.get("/klout/v2/user.json/5001/influence", params=CRM).json()
        assert doc == {
            "myInfluencers": [],
            "myInfluencees": [],
            "myInfluencersCount": 0,
            "myInfluenceesCount": 0,
        }
        soi = c.get("/klout/1/soi/influencer_of.json", params={**CRM, "users": "alice_example"})
        assert soi.json() == {
            "status": 200,
            "users": [{"twitter_screen_name": "alice_example", "influencees": []}],
        }


def test_without_objections_the_graph_is_shown_as_the_vendor_gives_it(
    client: httpx.Client,
) -> None:
    doc = client.get("/klout/v2/user.json/5001/influence", params=CRM).json()
    assert [e["entity"]["id"] for e in doc["myInfluencers"]] == ["5002"]
    assert doc["myInfluencersCount"] == 1


def test_a_policy_may_neutralize_people_in_place_instead(tmp_path: Path) -> None:
    """With ``people_inside_answers: neutralize`` bob keeps his place in alice's
    lists, with the neutral score and no movement."""
    data_dir = tmp_path / "var"
    policy = policy_with_objections(
        tmp_path / "policies.yaml",
        data_dir,
        BOB,
        replace={
            "  reveal_neutralized: false\n": "  reveal_neutralized: false\n"
            "  people_inside_answers: neutralize\n"
        },
    )
    with running_gateway(data_dir, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        doc = c.get("/klout/v2/user.json/5001/influence", params=MARKETING).json()
        (entry,) = doc["myInfluencers"]
        payload = entry["entity"]["payload"]
        assert payload["score"] == {"score": 40.0, "bucket": "40-49"}
        assert set(payload["scoreDeltas"].values()) == {0.0}
        assert doc["myInfluencersCount"] == 1
        soi = c.get("/klout/1/soi/influenced_by.json", params={**CRM, "users": "alice_example"})
        assert soi.json()["users"][0]["influencers"] == [
            {"twitter_screen_name": "bob_example", "kscore": 40.0}
        ]


@pytest.mark.parametrize(
    "subjects",
    [
        pytest.param([("twitter_screen_name", "bob_example")], id="by-screen-name"),
        pytest.param([("klout_id", "5002")], id="by-klout-id"),
    ],
)
def test_an_objection_under_an_identifier_the_answer_shows_withholds_the_entry(
    tmp_path: Path, subjects: list[tuple[str, str]]
) -> None:
    """An influence entry shows a kloutId and a nick; either one objected is enough."""
    data_dir = tmp_path / "var"
    policy = policy_with_objections(tmp_path / "policies.yaml", data_dir, subjects)
    with running_gateway(data_dir, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        r = c.get("/klout/v2/user.json/5001/influence", params=CRM)
        assert "23.4" not in r.text
        assert "bob_example" not in r.text


ADMIN = {"Authorization": "Bearer demo-admin-token"}


def _subject_records(c: httpx.Client, identifier: str, request_id: str) -> list[Any]:
    r = c.get(
        "/admin/audit/subject", params={"upstream": "klout", "subject": identifier}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    return [rec for rec in r.json()["records"] if rec["record"]["request_id"] == request_id]


@pytest.mark.parametrize("identifier", ["5002", "bob_example"])
def test_subject_access_finds_answers_that_disclosed_the_person(
    client: httpx.Client, identifier: str
) -> None:
    """bob shown in alice's influence list: his subject access finds that answer, whose
    record names him as disclosed (a commitment, never his pseudonym or name)."""
    r = client.get("/klout/v2/user.json/5001/influence", params=CRM)
    (entry,) = _subject_records(client, identifier, r.headers["x-request-id"])
    record = entry["record"]
    assert record["kind"] == "lookup"  # the outcome; the intent named alice only
    roles = [p.get("r", "asked") for p in record["people"]]
    assert roles[0] == "asked"
    assert "disclosed" in roles
    assert "bob_example" not in str(record)


def test_subject_access_finds_answers_that_withheld_the_person(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    policy = policy_with_objections(tmp_path / "policies.yaml", data_dir, BOB)
    with running_gateway(data_dir, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        r = c.get("/klout/1/soi/influenced_by.json", params={**CRM, "users": "alice_example"})
        (entry,) = _subject_records(c, "bob_example", r.headers["x-request-id"])
        people = entry["record"]["people"]
        assert [(p.get("r", "asked"), p["o"]) for p in people] == [
            ("asked", "found"),
            ("withheld", "objected"),
        ]
