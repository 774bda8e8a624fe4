"""The simulated Klout, served for real on loopback and spoken to over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.demo.upstream import (
    DEMO_PEOPLE,
    DEMO_UPSTREAM_KEY,
    REDIRECT_TARGET,
    DemoPerson,
    DemoUpstream,
    DemoUpstreamConfig,
    Fault,
    create_demo_upstream,
    run_demo_upstream,
)
from tests.support.servers import free_port, serve_asgi

KEY = f"key={DEMO_UPSTREAM_KEY}"
# Quotas out of the way for tests that are not about quotas.
UNTHROTTLED = DemoUpstreamConfig(calls_per_second=1e6, calls_per_day=10**9)
NO_USERS = {"status": 200, "headers": [], "body": {"error": "No users"}}
NOT_FOUND = {"error": 404, "description": "Resource or user not found."}
QUEUED = {
    "status": 202,
    "description": "Your request was accepted and the user was queued for processing.",
}
ALICE_DELTAS = {"dayChange": 0.11, "weekChange": 0.42, "monthChange": 1.87}
BOB_V2 = {
    "kloutId": "5002",
    "nick": "bob_example",
    "score": {"score": 23.4, "bucket": "20-29"},
    "scoreDeltas": {"dayChange": -0.07, "weekChange": -0.34, "monthChange": 0.25},
}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def running(
    config: DemoUpstreamConfig | None = UNTHROTTLED,
    clock: Callable[[], float] = time.time,
    timeout: float = 5.0,
) -> Iterator[tuple[DemoUpstream, httpx.Client]]:
    app = create_demo_upstream(config, clock=clock)
    # uvicorn's Date and Server headers off, as run_demo_upstream does.
    with (
        serve_asgi(app, date_header=False, server_header=False) as url,
        httpx.Client(base_url=url, timeout=timeout) as client,
    ):
        yield app, client


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[DemoUpstream, httpx.Client]]:
    with running() as served:
        yield served


@pytest.fixture
def client(shared: tuple[DemoUpstream, httpx.Client]) -> httpx.Client:
    return shared[1]


@pytest.fixture(scope="module")
def by_missing_status(
    shared: tuple[DemoUpstream, httpx.Client],
) -> Iterator[dict[int, httpx.Client]]:
    """A client per ``v1_missing_status``: the shared server (200) and one with 404."""
    config = DemoUpstreamConfig(calls_per_second=1e6, calls_per_day=10**9, v1_missing_status=404)
    with running(config) as (_, client_404):
        yield {200: shared[1], 404: client_404}


def raw_get(client: httpx.Client, target: str) -> bytes:
    """The complete answer to a GET, every byte of status line, headers and body."""
    url = client.base_url
    assert url.host
    assert url.port
    with socket.create_connection((url.host, url.port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- v1 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "expected_user"),
    [
        pytest.param(
            "/1/klout.json",
            {"twitter_screen_name": "alice_example", "kscore": 71.3},
            id="klout",
        ),
        pytest.param(
            "/1/users/topics.json",
            {
                "twitter_screen_name": "alice_example",
                "topics": ["privacy", "open source", "cycling"],
            },
            id="topics",
        ),
        pytest.param(
            "/1/soi/influenced_by.json",
            {
                "twitter_screen_name": "alice_example",
                "influencers": [{"twitter_screen_name": "bob_example", "kscore": 23.4}],
            },
            id="influenced-by",
        ),
        pytest.param(
            "/1/soi/influencer_of.json",
            {
                "twitter_screen_name": "alice_example",
                "influencees": [{"twitter_screen_name": "bob_example", "kscore": 23.4}],
            },
            id="influencer-of-without-opted-out-carol",
        ),
    ],
)
def test_v1_routes_answer_the_documented_shapes(
    client: httpx.Client, route: str, expected_user: dict[str, Any]
) -> None:
    """Each v1 route wraps its users as ``{"status": 200, "users": [...]}``."""
    response = client.get(f"{route}?{KEY}&users=alice_example")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"status": 200, "users": [expected_user]}


def test_v1_show_carries_the_documented_user_object(client: httpx.Client) -> None:
    """users/show.json has a string twitter_id and the documented score fields."""
    body = client.get(f"/1/users/show.json?{KEY}&users=alice_example").json()
    (user,) = body["users"]
    assert user["twitter_id"] == "1001"
    assert user["twitter_screen_name"] == "alice_example"
    assert set(user["score"]) == {
        "kscore",
        "slope",
        "description",
        "kclass_id",
        "kclass",
        "kclass_description",
        "kscore_description",
        "network_score",
        "amplification_score",
        "true_reach",
        "delta_1day",
        "delta_5day",
    }
    assert user["score"]["kscore"] == 71.3


def test_v1_returns_only_the_known_users_in_request_order(client: httpx.Client) -> None:
    """Unknown, opted-out and repeated names are left out; names match case-insensitively."""
    users = "bob_example,nobody_example,carol_optedout,ALICE_EXAMPLE,bob_example"
    body = client.get(f"/1/klout.json?{KEY}&users={users}").json()
    assert body == {
        "status": 200,
        "users": [
            {"twitter_screen_name": "bob_example", "kscore": 23.4},
            {"twitter_screen_name": "alice_example", "kscore": 71.3},
        ],
    }


def test_v1_takes_at_most_five_users(client: httpx.Client) -> None:
    """Five names are served; six get a 400 in the shape of the "No users" body."""
    five = ",".join(["alice_example"] + [f"n{i}" for i in range(4)])
    assert client.get(f"/1/klout.json?{KEY}&users={five}").status_code == 200
    response = client.get(f"/1/klout.json?{KEY}&users={five},n9")
    assert response.status_code == 400
    assert response.json() == {
        "status": 400,
        "headers": [],
        "body": {"error": "Too many users: at most 5 per call"},
    }


@pytest.mark.parametrize(
    "users",
    [
        pytest.param("nobody_example", id="never-existed"),
        pytest.param("carol_optedout", id="opted-out"),
        pytest.param("", id="empty"),
        pytest.param(None, id="no-users-parameter"),
    ],
)
@pytest.mark.parametrize(
    "status", [pytest.param(200, id="http-200"), pytest.param(404, id="http-404")]
)
def test_v1_no_known_user_gets_no_users(
    by_missing_status: dict[int, httpx.Client], users: str | None, status: int
) -> None:
    """With nobody known the body is "No users", served with the configured status."""
    query = KEY if users is None else f"{KEY}&users={users}"
    response = by_missing_status[status].get(f"/1/klout.json?{query}")
    assert response.status_code == status
    assert response.json() == NO_USERS


@pytest.mark.parametrize(
    ("users", "status", "body"),
    [
        pytest.param("dave_queued", 202, QUEUED, id="queued-alone"),
        pytest.param("dave_queued,nobody_example", 202, QUEUED, id="queued-and-unknown"),
        pytest.param(
            "dave_queued,bob_example",
            200,
            {"status": 200, "users": [{"twitter_screen_name": "bob_example", "kscore": 23.4}]},
            id="queued-and-known",
        ),
    ],
)
def test_v1_queued_user_answers_202_when_nobody_is_served(
    client: httpx.Client, users: str, status: int, body: object
) -> None:
    """A queued user gets 202 unless a known user is served, who then stands alone."""
    response = client.get(f"/1/klout.json?{KEY}&users={users}")
    assert (response.status_code, response.json()) == (status, body)


# --- v2 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("/v2/identity.json/tw/1001", {"id": "5001", "network": "ks"}, id="tw"),
        pytest.param("/v2/identity.json/gp/2001", {"id": "5001", "network": "ks"}, id="gp"),
        pytest.param("/v2/identity.json/ig/3001", {"id": "5001", "network": "ks"}, id="ig"),
        pytest.param(
            "/v2/identity.json/twitter?screenName=alice_example",
            {"id": "5001", "network": "ks"},
            id="screen-name",
        ),
        pytest.param(
            "/v2/identity.json/klout/5001/tw", {"id": "1001", "network": "tw"}, id="reverse-tw"
        ),
        pytest.param(
            "/v2/identity.json/klout/5001/gp", {"id": "2001", "network": "gp"}, id="reverse-gp"
        ),
        pytest.param(
            "/v2/user.json/5001",
            {
                "kloutId": "5001",
                "nick": "alice_example",
                "score": {"score": 71.3, "bucket": "70-79"},
                "scoreDeltas": ALICE_DELTAS,
            },
            id="user-has-scoreDeltas",
        ),
        pytest.param(
            "/v2/user.json/5001/score",
            {"score": 71.3, "scoreDelta": ALICE_DELTAS, "bucket": "70-79"},
            id="score-has-scoreDelta",
        ),
        pytest.param(
            "/v2/user.json/5001/influence",
            {
                "myInfluencers": [{"entity": {"id": "5002", "payload": BOB_V2}}],
                "myInfluencees": [{"entity": {"id": "5002", "payload": BOB_V2}}],
                "myInfluencersCount": 1,
                "myInfluenceesCount": 1,
            },
            id="influence-without-opted-out-carol",
        ),
    ],
)
def test_v2_routes_answer_the_documented_shapes(
    client: httpx.Client, target: str, expected: object
) -> None:
    """Each v2 route answers its documented body, with every id a JSON string."""
    separator = "&" if "?" in target else "?"
    response = client.get(f"{target}{separator}{KEY}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == expected


def test_v2_topics_are_a_bare_array_with_string_ids(client: httpx.Client) -> None:
    """Topics come as a JSON array; their ids exceed 2**53 and so are strings."""
    topics = client.get(f"/v2/user.json/5001/topics?{KEY}").json()
    assert [topic["displayName"] for topic in topics] == ["Privacy", "Open Source", "Cycling"]
    assert topics[1]["slug"] == "open-source"
    assert all(topic["topicType"] == "sub" for topic in topics)
    assert all(isinstance(topic["id"], str) and topic["id"].isdigit() for topic in topics)
    assert max(int(topic["id"]) for topic in topics) > 2**53


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/v2/identity.json/asdqsdasd/1234", id="unknown-network"),
        pytest.param("/v2/identity.json/ks/5001", id="ks-does-not-work"),
        pytest.param("/v2/identity.json/klout/5001/ig", id="unknown-reverse-network"),
    ],
)
def test_v2_invalid_network_name_is_a_server_error(client: httpx.Client, target: str) -> None:
    """An invalid network name gets a 500, as the PHP SDK's test expects a 5xx."""
    response = client.get(f"{target}?{KEY}")
    assert response.status_code == 500
    assert response.json() == {"error": 500, "description": "Klout internal server error."}


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/v2/identity.json/klout/5002/gp", id="reverse-gp-without-google-id"),
        pytest.param("/v2/identity.json/tw/abc", id="non-digit-id"),
        pytest.param("/v2/identity.json/twitter", id="no-screen-name"),
        pytest.param("/v2/user.json/5001/", id="trailing-slash"),
        pytest.param("/v2/user.json/5001/friends", id="unknown-user-resource"),
        pytest.param("/v2/nothing.json", id="unknown-v2-route"),
    ],
)
def test_v2_unknown_resources_are_404(client: httpx.Client, target: str) -> None:
    """Anything the v2 API lacks answers the same synthetic 404 body."""
    response = client.get(f"{target}?{KEY}")
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/v2/identity.json/tw/1004", id="identity-tw"),
        pytest.param("/v2/identity.json/twitter?screenName=dave_queued", id="identity-screen-name"),
        pytest.param("/v2/identity.json/klout/5004/tw", id="reverse"),
        pytest.param("/v2/user.json/5004", id="user"),
        pytest.param("/v2/user.json/5004/score", id="score"),
        pytest.param("/v2/user.json/5004/topics", id="topics"),
    ],
)
def test_v2_queued_person_answers_202(client: httpx.Client, target: str) -> None:
    """Every v2 lookup about the queued person says "queued for processing"."""
    separator = "&" if "?" in target else "?"
    response = client.get(f"{target}{separator}{KEY}")
    assert (response.status_code, response.json()) == (202, QUEUED)


# --- opted out looks exactly like never existed ----------------------------------------


CAROL_VS_NOBODY = [
    pytest.param(
        f"/1/klout.json?{KEY}&users={{}}", "carol_optedout", "nobody_example", id="v1-klout"
    ),
    pytest.param(
        f"/1/users/show.json?{KEY}&users={{}}", "carol_optedout", "nobody_example", id="v1-show"
    ),
    pytest.param(
        f"/1/users/topics.json?{KEY}&users={{}}", "carol_optedout", "nobody_example", id="v1-topics"
    ),
    pytest.param(
        f"/1/soi/influenced_by.json?{KEY}&users={{}}",
        "carol_optedout",
        "nobody_example",
        id="v1-influenced-by",
    ),
    pytest.param(
        f"/1/klout.json?{KEY}&users=alice_example,{{}}",
        "carol_optedout",
        "nobody_example",
        id="v1-beside-a-known-user",
    ),
    pytest.param(
        f"/1/klout.json?{KEY}&users=dave_queued,{{}}",
        "carol_optedout",
        "nobody_example",
        id="v1-beside-a-queued-user",
    ),
    pytest.param("/v2/identity.json/tw/{}?" + KEY, "1003", "1999", id="v2-identity-tw"),
    pytest.param("/v2/identity.json/gp/{}?" + KEY, "2003", "2999", id="v2-identity-gp"),
    pytest.param("/v2/identity.json/ig/{}?" + KEY, "3003", "3999", id="v2-identity-ig"),
    pytest.param(
        "/v2/identity.json/twitter?screenName={}&" + KEY,
        "carol_optedout",
        "nobody_example",
        id="v2-identity-screen-name",
    ),
    pytest.param("/v2/identity.json/klout/{}/tw?" + KEY, "5003", "5999", id="v2-reverse-tw"),
    pytest.param("/v2/identity.json/klout/{}/gp?" + KEY, "5003", "5999", id="v2-reverse-gp"),
    pytest.param("/v2/user.json/{}?" + KEY, "5003", "5999", id="v2-user"),
    pytest.param("/v2/user.json/{}/score?" + KEY, "5003", "5999", id="v2-score"),
    pytest.param("/v2/user.json/{}/topics?" + KEY, "5003", "5999", id="v2-topics"),
    pytest.param("/v2/user.json/{}/influence?" + KEY, "5003", "5999", id="v2-influence"),
]


@pytest.mark.parametrize(("template", "carol", "nobody"), CAROL_VS_NOBODY)
@pytest.mark.parametrize(
    "v1_missing_status", [pytest.param(200, id="v1-200"), pytest.param(404, id="v1-404")]
)
def test_opted_out_answer_is_byte_identical_to_never_existed(
    by_missing_status: dict[int, httpx.Client],
    template: str,
    carol: str,
    nobody: str,
    v1_missing_status: int,
) -> None:
    """Carol (opted out) and nobody (never existed) get the same status, headers and bytes."""
    client = by_missing_status[v1_missing_status]
    for_carol = raw_get(client, template.format(carol))
    for_nobody = raw_get(client, template.format(nobody))
    assert for_carol == for_nobody
    assert b"carol" not in for_carol
    assert b"1003" not in for_carol


# --- Mashery: keys and quotas -----------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        pytest.param("/1/klout.json?users=alice_example", {}, id="v1-no-key"),
        pytest.param("/1/klout.json?users=alice_example&key=wrong", {}, id="v1-wrong-key"),
        pytest.param("/1/klout.json?users=alice_example&key=", {}, id="v1-empty-key"),
        pytest.param(
            "/1/klout.json?users=alice_example",
            {"X-Api-Key": DEMO_UPSTREAM_KEY},
            id="v1-key-in-a-header",
        ),
        pytest.param("/1/no-such-route.json", {}, id="v1-unknown-route-no-key"),
    ],
)
def test_v1_without_a_valid_key_gets_mashery_not_authorized(
    client: httpx.Client, target: str, headers: dict[str, str]
) -> None:
    """v1 calls without a valid ``key`` parameter get Mashery's ERR_403_NOT_AUTHORIZED."""
    response = client.get(target, headers=headers)
    assert response.status_code == 403
    assert response.headers["x-mashery-error-code"] == "ERR_403_NOT_AUTHORIZED"
    assert response.headers["content-type"] == "text/xml"
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/v2/user.json/5001", id="v2-no-key"),
        pytest.param("/v2/user.json/5001?key=wrong", id="v2-wrong-key"),
        pytest.param(f"/v2/user.json/5001?key={DEMO_UPSTREAM_KEY.upper()}", id="v2-key-wrong-case"),
    ],
)
def test_v2_without_a_valid_key_gets_the_documented_403(client: httpx.Client, target: str) -> None:
    """v2 calls without a valid key get the verbatim JSON 403."""
    response = client.get(target)
    assert response.status_code == 403
    assert response.json() == {
        "error": 403,
        "description": "Invalid or unprovided API key. All calls must have a key.",
    }


def test_accepted_keys_are_configurable() -> None:
    """Only the configured keys are accepted."""
    with running(DemoUpstreamConfig(keys=("other-key",))) as (_, client):
        assert client.get("/v2/user.json/5001?key=other-key").status_code == 200
        assert client.get(f"/v2/user.json/5001?{KEY}").status_code == 403


def test_qps_limit_answers_mashery_over_qps_until_a_token_refills() -> None:
    """The 11th call in one second gets OVER_QPS with Retry-After 1; 1/8 s refills one call."""
    clock = FakeClock(1_700_000_000.0)
    with running(DemoUpstreamConfig(), clock) as (_, client):
        statuses = [client.get(f"/v2/user.json/5001?{KEY}").status_code for _ in range(10)]
        assert statuses == [200] * 10
        throttled = client.get(f"/1/klout.json?{KEY}&users=alice_example")
        clock.now += 0.125  # exact in binary, unlike 0.1
        refilled = client.get(f"/v2/user.json/5001?{KEY}")
        again = client.get(f"/v2/user.json/5001?{KEY}")
    assert throttled.status_code == 403
    assert throttled.headers["x-mashery-error-code"] == "ERR_403_DEVELOPER_OVER_QPS"
    assert throttled.headers["x-error-detail-header"] == "Account Over Queries Per Second Limit"
    assert throttled.headers["retry-after"] == "1"
    assert throttled.headers["content-type"] == "text/xml"
    assert throttled.content == b"<h1>Developer Over Qps</h1>"
    assert refilled.status_code == 200
    assert again.headers["x-mashery-error-code"] == "ERR_403_DEVELOPER_OVER_QPS"


def test_daily_limit_answers_over_rate_until_utc_midnight() -> None:
    """Past the daily quota calls get OVER_RATE with Retry-After to midnight UTC; then it resets."""
    one_hour_before_midnight = 19_000 * 86_400 + 23 * 3600.0
    clock = FakeClock(one_hour_before_midnight)
    with running(DemoUpstreamConfig(calls_per_day=3), clock) as (_, client):
        for _ in range(3):
            clock.now += 1.0
            assert client.get(f"/v2/user.json/5001?{KEY}").status_code == 200
        over = client.get(f"/v2/user.json/5001?{KEY}")
        clock.now = one_hour_before_midnight + 3600.0
        next_day = client.get(f"/v2/user.json/5001?{KEY}")
    assert over.status_code == 403
    assert over.headers["x-mashery-error-code"] == "ERR_403_DEVELOPER_OVER_RATE"
    assert over.headers["x-error-detail-header"] == "Account Over Rate Limit"
    assert over.headers["retry-after"] == str(3600 - 3)
    assert over.content == b"<h1>Developer Over Rate</h1>"
    assert next_day.status_code == 200


def test_rejected_calls_cost_no_quota() -> None:
    """Calls refused for their key or for QPS do not count towards the daily quota."""
    clock = FakeClock(1_700_000_000.0)
    config = DemoUpstreamConfig(calls_per_second=1, calls_per_day=2)
    with running(config, clock) as (_, client):
        for _ in range(5):
            assert client.get("/v2/user.json/5001?key=wrong").status_code == 403
        assert client.get(f"/v2/user.json/5001?{KEY}").status_code == 200
        qps = client.get(f"/v2/user.json/5001?{KEY}")
        clock.now += 1.0
        second = client.get(f"/v2/user.json/5001?{KEY}")
    assert qps.headers["x-mashery-error-code"] == "ERR_403_DEVELOPER_OVER_QPS"
    assert second.status_code == 200


# --- Klout's own refusals ---------------------------------------------------------------


def test_overload_answers_503_with_the_configured_body() -> None:
    """At overload rate 1 every passing call gets 503 with the configured text."""
    config = DemoUpstreamConfig(calls_per_second=1e6, overload_rate=1.0, overload_body="Busy!")
    with running(config) as (_, client):
        response = client.get(f"/v2/user.json/5001?{KEY}")
        unkeyed = client.get("/v2/user.json/5001")
    assert (response.status_code, response.text) == (503, "Busy!")
    assert unkeyed.status_code == 403  # Mashery refuses before Klout is reached


def test_overload_default_body_is_the_blog_posts_wording() -> None:
    """The default overload body is "Service too busy"."""
    assert DemoUpstreamConfig().overload_body == "Service too busy"


def test_overload_is_random_but_repeatable_with_a_seed() -> None:
    """A partial overload rate mixes 503s into the answers, the same way for the same seed."""
    config = DemoUpstreamConfig(calls_per_second=1e6, overload_rate=0.5, seed=7)
    runs = []
    for _ in range(2):
        with running(config) as (_, client):
            runs.append([client.get(f"/v2/user.json/5001?{KEY}").status_code for _ in range(20)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503}


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/", id="root"),
        pytest.param(f"/2/klout.json?{KEY}", id="unknown-version"),
        pytest.param(f"/1/klout.xml?{KEY}&users=alice_example", id="v1-xml"),
    ],
)
def test_paths_outside_the_api_are_404(client: httpx.Client, target: str) -> None:
    """Paths the API lacks answer 404."""
    assert client.get(target).status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_methods_other_than_get_are_405(client: httpx.Client, method: str) -> None:
    """The read API answers only GET; other methods get 405 with ``Allow: GET``."""
    response = client.request(method, f"/v2/user.json/5001?{KEY}", content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


# --- faults ---------------------------------------------------------------------------


def test_delay_makes_a_slow_upstream() -> None:
    """With a delay, a client with a shorter read timeout times out."""
    config = DemoUpstreamConfig(calls_per_second=1e6, delay_seconds=0.3)
    with running(config, timeout=0.05) as (_, client):
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"/v2/user.json/5001?{KEY}")
        assert client.get(f"/v2/user.json/5001?{KEY}", timeout=2).status_code == 200


def served_with(
    fault: Fault, **options: Any
) -> contextlib.AbstractContextManager[tuple[DemoUpstream, httpx.Client]]:
    return running(DemoUpstreamConfig(calls_per_second=1e6, fault=fault, **options))


def test_fault_malformed_json_cuts_the_body() -> None:
    """``malformed_json`` answers the right status with JSON that does not parse."""
    with served_with("malformed_json") as (_, client):
        response = client.get(f"/v2/user.json/5001?{KEY}")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(response.content))
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_fault_wrong_types_swaps_strings_and_numbers() -> None:
    """``wrong_types`` sends ids as numbers and scores as strings."""
    with served_with("wrong_types") as (_, client):
        body = client.get(f"/v2/user.json/5001?{KEY}").json()
    assert body["kloutId"] == 5001
    assert body["score"] == {"score": "71.3", "bucket": "70-79"}


def test_fault_endless_body_never_ends() -> None:
    """``endless_body`` streams a chunked JSON body for as long as the client reads."""
    with (
        served_with("endless_body") as (_, client),
        client.stream("GET", f"/1/klout.json?{KEY}&users=alice_example") as response,
    ):
        assert response.status_code == 200
        assert "content-length" not in response.headers
        read = 0
        for chunk in response.iter_raw():
            read += len(chunk)
            if read > 4 * 1024 * 1024:
                break
    assert read > 4 * 1024 * 1024


def test_fault_huge_body_is_valid_json_past_the_size() -> None:
    """``huge_body`` keeps the answer's shape but pads it past ``huge_body_bytes``."""
    with served_with("huge_body", huge_body_bytes=2 * 1024 * 1024) as (_, client):
        v1 = client.get(f"/1/klout.json?{KEY}&users=alice_example")
        topics = client.get(f"/v2/user.json/5001/topics?{KEY}")
    assert int(v1.headers["content-length"]) > 2 * 1024 * 1024
    assert v1.json()["users"] == [{"twitter_screen_name": "alice_example", "kscore": 71.3}]
    assert topics.json()[1]["displayName"] == "Privacy"


def test_fault_redirect_points_at_cloud_metadata() -> None:
    """``redirect`` answers 302 to the link-local metadata address."""
    with served_with("redirect") as (_, client):
        response = client.get(f"/v2/user.json/5001?{KEY}")
    assert response.status_code == 302
    assert response.headers["location"] == REDIRECT_TARGET == "http://169.254.169.254/"


def test_fault_stall_headers_never_answers() -> None:
    """``stall_headers`` holds the connection without sending a status line."""
    with served_with("stall_headers") as (app, client):
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"/v2/user.json/5001?{KEY}", timeout=0.2)
        assert len(app.received) == 1


def test_fault_set_cookie_decorates_every_answer() -> None:
    """``set_cookie`` adds Set-Cookie and hop-by-hop headers, also to Mashery's 403s."""
    with served_with("set_cookie") as (_, client):
        answers = [client.get(f"/v2/user.json/5001?{KEY}"), client.get("/1/klout.json")]
    for response in answers:
        assert response.headers["set-cookie"].startswith("klout_session=")
        assert response.headers["connection"] == "keep-alive, x-klout-backend"
        assert response.headers["keep-alive"] == "timeout=5, max=100"
        assert "x-klout-backend" in response.headers
        assert "proxy-authenticate" in response.headers
    assert [response.status_code for response in answers] == [200, 403]


# --- the log of received requests ---------------------------------------------------------


def test_received_log_records_every_request_as_sent(
    shared: tuple[DemoUpstream, httpx.Client],
) -> None:
    """Each request is logged with method, raw path, query string and headers, even if refused."""
    app, client = shared
    client.get("/v2/identity.json/twitter?screenName=alice%5Fexample", headers={"X-Caller": "crm"})
    client.post("/v2/user.json/5001?key=wrong")
    lookup, refused = list(app.received)[-2:]
    assert lookup.method == "GET"
    assert lookup.path == "/v2/identity.json/twitter"
    assert lookup.query_string == "screenName=alice%5Fexample"
    assert ("x-caller", "crm") in lookup.headers
    assert lookup.mentions("alice_example")  # found percent-decoded
    assert lookup.mentions("crm")
    assert not lookup.mentions("1001")
    assert (refused.method, refused.query_string) == ("POST", "key=wrong")


def test_received_log_is_bounded() -> None:
    """The log keeps only the latest ``received_log_size`` requests."""
    with running(DemoUpstreamConfig(calls_per_second=1e6, received_log_size=3)) as (app, client):
        for n in range(5):
            client.get(f"/v2/user.json/{n}?{KEY}")
    assert [request.path for request in app.received] == [f"/v2/user.json/{n}" for n in (2, 3, 4)]


# --- configuration and serving -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"overload_rate": 1.5}, "overload_rate must be in [0, 1], got 1.5", id="rate"),
        pytest.param({"calls_per_second": 0}, "calls_per_second must be > 0, got 0", id="qps"),
        pytest.param({"calls_per_day": 0}, "calls_per_day must be >= 1, got 0", id="daily"),
        pytest.param({"delay_seconds": -1.0}, "delay_seconds must be >= 0, got -1.0", id="delay"),
        pytest.param({"received_log_size": 0}, "received_log_size must be >= 1, got 0", id="log"),
    ],
)
def test_config_rejects_impossible_values(options: dict[str, Any], message: str) -> None:
    """Impossible settings fail at construction, naming the value."""
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DemoUpstreamConfig(**options)


@pytest.mark.parametrize(
    ("people", "message"),
    [
        pytest.param(
            (*DEMO_PEOPLE, DemoPerson(screen_name="x", twitter_id="1001", klout_id="9", score=1.0)),
            "two demo people share twitter_id '1001'",
            id="duplicate-twitter-id",
        ),
        pytest.param(
            (DemoPerson(screen_name="x", twitter_id="1", klout_id="2"),),
            "active person 'x' has no score",
            id="active-without-score",
        ),
    ],
)
def test_people_must_be_consistent(people: tuple[DemoPerson, ...], message: str) -> None:
    """Duplicate identifiers and active people without a score are rejected."""
    with pytest.raises(ValueError, match=message):
        create_demo_upstream(DemoUpstreamConfig(people=people))


def test_demo_people_are_the_documented_ones() -> None:
    """The demo people match design.md; nobody_example is deliberately absent."""
    by_name = {person.screen_name: person for person in DEMO_PEOPLE}
    assert (by_name["alice_example"].twitter_id, by_name["alice_example"].klout_id) == (
        "1001",
        "5001",
    )
    assert by_name["alice_example"].score == 71.3
    assert by_name["bob_example"].score == 23.4
    assert by_name["carol_optedout"].state == "opted_out"
    assert by_name["dave_queued"].state == "queued"
    assert "nobody_example" not in by_name
    assert all(person.twitter_id != "1999" for person in DEMO_PEOPLE)


def test_run_demo_upstream_serves_until_cancelled() -> None:
    """run_demo_upstream answers without Date or Server headers and stops when cancelled."""

    async def scenario() -> httpx.Response:
        port = free_port()
        serving = asyncio.create_task(run_demo_upstream("127.0.0.1", port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    response = await client.get(f"/v2/user.json/5001?{KEY}")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.01)
            else:
                raise AssertionError("run_demo_upstream did not start")
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        return response

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert [name for name, _ in response.headers.raw] == [b"content-type", b"content-length"]
