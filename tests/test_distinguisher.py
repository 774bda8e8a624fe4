"""The distinguisher: nothing a caller receives tells why a person has no score.

For every route of both Klout API versions and for the CRM, support and
marketing clients, the answers about people in different situations are
compared: opted out of Klout (carol), never existed (nobody), still being
processed (dave, HTTP 202), objected under the identifier asked (bob), objected
under a *different* identifier than the one asked (alice, objected by screen
name only, asked by Twitter id or kloutId), and an id the gateway issued itself.

Status and headers must be identical (apart from the request id, and the
Content-Length that follows the echoed identifier's length), and the bodies must
be identical once the identifier asked is replaced by a placeholder. Values the
gateway mints per person, as a function of that person's identifier alone (a
neutral id, a v1 user's per-person fields), are compared by JSON type: the same
function serves every situation, so they carry nothing about it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from tests.support.gateway import RunningGateway, running_gateway
from tests.support.people import BOB, FAST_VENDOR, NO_RATE_LIMIT, policy_with_objections

CLIENTS = {"crm": "demo-crm-key", "support": "demo-support-key", "marketing": "demo-marketing-key"}

# (route, the identifier each person is asked by). None: the route takes no such id.
PEOPLE = {
    # situation: (screen name, Twitter id, kloutId)
    "opted-out": ("carol_optedout", "1003", "5003"),
    "never-existed": ("nobody_example", "1999", "5999"),
    "pending": ("dave_queued", "1004", "5004"),
    "objected": ("bob_example", "1002", "5002"),
}
ROUTES = {
    "v2-identity-twitter": "/klout/v2/identity.json/twitter?screenName={name}",
    "v2-identity-tw": "/klout/v2/identity.json/tw/{tw}",
    "v2-identity-klout-tw": "/klout/v2/identity.json/klout/{kid}/tw",
    "v2-user": "/klout/v2/user.json/{kid}",
    "v2-user-score": "/klout/v2/user.json/{kid}/score",
    "v2-user-topics": "/klout/v2/user.json/{kid}/topics",
    "v2-user-influence": "/klout/v2/user.json/{kid}/influence",
    "v1-klout": "/klout/1/klout.json?users={name}",
    "v1-users-show": "/klout/1/users/show.json?users={name}",
    "v1-users-topics": "/klout/1/users/topics.json?users={name}",
    "v1-soi-influenced-by": "/klout/1/soi/influenced_by.json?users={name}",
    "v1-soi-influencer-of": "/klout/1/soi/influencer_of.json?users={name}",
}
# Fields whose value the gateway mints per person from the identifier alone.
MINTED = {"id", "twitter_id", "kloutId", "slope", "kclass_id", "kclass", "network_score"}
MINTED |= {"amplification_score", "true_reach", "delta_1day", "delta_5day"}
VOLATILE_HEADERS = {"x-request-id", "content-length", "date", "server"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """bob objected under every identifier; alice under her screen name only."""
    tmp = tmp_path_factory.mktemp("distinguisher")
    data_dir = tmp / "var"
    objections = [*BOB, ("twitter_screen_name", "alice_example")]
    policy = policy_with_objections(
        tmp / "policies.yaml", data_dir, objections, replace=NO_RATE_LIMIT
    )
    with running_gateway(data_dir, policies=policy, upstream_config=FAST_VENDOR) as gw:
        _link_alice(gw)
        yield gw


def _link_alice(gw: RunningGateway) -> None:
    """Ordinary traffic teaches the identity graph that Twitter id 1001 and kloutId
    5001 are alice_example's (the user object names her); the gateway cannot know an
    identifier no answer ever linked (README, "What the gateway cannot know")."""
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert c.get("/klout/v2/identity.json/tw/1001", params={"key": CLIENTS["crm"]}).json() == {
            "id": "5001",
            "network": "ks",
        }
        c.get("/klout/v2/user.json/5001", params={"key": CLIENTS["crm"]})
    assert gw.state.identity is not None
    assert gw.state.pseudonyms is not None
    name = gw.state.pseudonyms.pseudonym("twitter_screen_name", "alice_example")
    deadline = time.monotonic() + 5
    while len(gw.state.identity.store.members_of(name)) < 3:
        assert time.monotonic() < deadline, "alice's identifiers were not linked"
        time.sleep(0.02)
    time.sleep(2 * gw.state.identity.refresh_interval)  # every replica's snapshot has it


def _ask(c: httpx.Client, template: str, key: str, name: str, tw: str, kid: str) -> httpx.Response:
    target = template.format(name=name, tw=tw, kid=kid)
    sep = "&" if "?" in target else "?"
    return c.get(f"{target}{sep}key={key}")


def _normal(r: httpx.Response, echoed: tuple[str, ...]) -> tuple[int, list[tuple[str, str]], Any]:
    assert int(r.headers["content-length"]) == len(r.content)
    headers = sorted((k, v) for k, v in r.headers.items() if k not in VOLATILE_HEADERS)
    text = r.text
    for identifier in echoed:
        text = text.replace(f'"{identifier}"', '"ID"')
    return r.status_code, headers, _mask(msgspec.json.decode(text.encode()))


def _mask(node: Any, key: str | None = None) -> Any:
    if isinstance(node, dict):
        return [(k, _mask(v, k)) for k, v in node.items()]
    if isinstance(node, list):
        return [_mask(v) for v in node]
    if key in MINTED and node != "ID":
        return type(node).__name__
    return node


def _issued_klout_id(c: httpx.Client) -> str:
    r = c.get("/klout/v2/identity.json/tw/1999", params={"key": "demo-crm-key"})
    return str(r.json()["id"])


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_no_situation_can_be_told_from_never_existed(
    gateway: RunningGateway, route: str, client: str
) -> None:
    """Opted out, pending, objected and gateway-issued ids answer exactly like a
    person who never existed, on this route, for this client."""
    template, key = ROUTES[route], CLIENTS[client]
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        answers = {}
        for situation, (name, tw, kid) in PEOPLE.items():
            r = _ask(c, template, key, name, tw, kid)
            answers[situation] = _normal(r, (name, tw, kid))
        if "{kid}" in template:
            issued = _issued_klout_id(c)
            r = _ask(c, template, key, "", "", issued)
            answers["gateway-issued"] = _normal(r, (issued,))
    reference = answers.pop("never-existed")
    assert reference[0] == 200
    for situation, answer in answers.items():
        assert answer == reference, situation


# Asked by an identifier other than the one objected: alice objected as
# alice_example, asked as Twitter id 1001 or kloutId 5001, which the identity graph
# linked to her from earlier answers (see _link_alice).
# (Not /influence: alice's lists hold only bob, objected, and carol, opted out, so
# her real answer is empty lists whether or not her objection is honoured.)
OTHER_IDENTIFIER_ROUTES = [
    r for r in ROUTES if ("{tw}" in ROUTES[r] or "{kid}" in ROUTES[r]) and r != "v2-user-influence"
]


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("route", OTHER_IDENTIFIER_ROUTES)
def test_objected_by_another_identifier_cannot_be_told_from_never_existed(
    gateway: RunningGateway, route: str, client: str
) -> None:
    template, key = ROUTES[route], CLIENTS[client]
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        reference = _normal(
            _ask(c, template, key, *PEOPLE["never-existed"]), PEOPLE["never-existed"]
        )
        alice = ("alice_example", "1001", "5001")
        assert _normal(_ask(c, template, key, *alice), alice) == reference


def test_no_question_about_an_objected_person_reached_the_vendor(gateway: RunningGateway) -> None:
    """The simulator's own log: bob's identifiers never arrived, whatever was asked."""
    assert gateway.upstream.received, "the suite asked the vendor nothing at all"
    for seen in gateway.upstream.received:
        assert not any(seen.mentions(identifier) for _, identifier in BOB), seen.path
