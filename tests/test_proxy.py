"""The request path end to end: the real gateway in front of the real simulator."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import klout
import pytest

from gateway.demo.upstream import DEMO_UPSTREAM_KEY, DemoUpstreamConfig
from tests.support.gateway import RunningGateway, limits, running_gateway

CRM = {"key": "demo-crm-key"}


def test_unmodified_klout_library_resolves_alice_and_reads_her_score(
    gateway: RunningGateway,
) -> None:
    """A stock Klout client pointed at host:port/klout with a gateway key just works."""
    host = gateway.url.removeprefix("http://") + "/klout"
    api = klout.Klout("demo-crm-key", domain=host)
    klout_id = api.identity.klout(screenName="alice_example")["id"]
    assert klout_id == "5001"
    assert api.user.score(kloutId=klout_id)["score"] == 71.3
    assert api.identity.klout(tw="1001")["id"] == "5001"


def test_bearer_key_over_plain_http_works_too(client: httpx.Client) -> None:
    """The key may travel in ``Authorization: Bearer`` instead of the API's key slot."""
    r = client.get(
        "/klout/v2/user.json/5001/score", headers={"Authorization": "Bearer demo-crm-key"}
    )
    assert r.status_code == 200
    assert r.json()["score"] == 71.3


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        pytest.param({"key": "wrong"}, {}, id="wrong-key-in-slot"),
        pytest.param({}, {"Authorization": "Bearer wrong"}, id="wrong-bearer"),
        pytest.param({}, {}, id="no-key"),
        pytest.param({}, {"Authorization": "Basic ZGVtby1jcm0ta2V5Og=="}, id="basic-scheme"),
        pytest.param({"key": DEMO_UPSTREAM_KEY}, {}, id="upstream-key-is-not-a-client-key"),
        pytest.param({}, {"Authorization": "Bearer demo-admin-token"}, id="admin-token"),
    ],
)
def test_bad_credentials_get_401_problem(
    client: httpx.Client, params: dict[str, str], headers: dict[str, str]
) -> None:
    r = client.get("/klout/v2/user.json/5001/score", params=params, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "client.unauthenticated"
    assert body["request_id"] == r.headers["x-request-id"]


def test_two_different_keys_are_refused(client: httpx.Client) -> None:
    r = client.get(
        "/klout/v2/user.json/5001/score",
        params={"key": "demo-crm-key"},
        headers={"Authorization": "Bearer demo-support-key"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "client.ambiguous_credentials"


def test_caller_key_is_swapped_for_the_upstream_credential(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """The upstream sees only its own key; the caller's key and headers stay behind."""
    r = client.get(
        "/klout/v2/user.json/5001/score",
        params={"key": "demo-crm-key"},
        headers={
            "Cookie": "session=1",
            "X-Gateway-Decision": "allow",
            "X-Forwarded-For": "10.0.0.1",
        },
    )
    assert r.status_code == 200
    seen = gateway.upstream.received[-1]
    assert seen.query_string == f"key={DEMO_UPSTREAM_KEY}"
    names = {name for name, _ in seen.headers}
    assert not names & {
        "cookie",
        "authorization",
        "x-gateway-decision",
        "x-forwarded-for",
        "x-purpose",
    }


def test_declared_parameters_are_forwarded_and_the_key_removed(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    r = client.get("/klout/v2/identity.json/twitter?screenName=alice_example&key=demo-crm-key")
    assert r.status_code == 200
    assert gateway.upstream.received[-1].query_string == (
        f"screenName=alice_example&key={DEMO_UPSTREAM_KEY}"
    )


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/klout/v2/identity.json/tw/1001?screenName=bob_example", id="smuggled-name"),
        pytest.param("/klout/v2/identity.json/twitter?screenName=alice_example&zeta=1", id="extra"),
        pytest.param("/klout/v2/user.json/5001/score?users=bob_example", id="other-routes-param"),
        pytest.param("/klout/1/klout.json?users=alice_example&callback=x", id="jsonp-callback"),
        pytest.param("/klout/v2/user.json/5001?bob_example=", id="identifier-as-name"),
    ],
)
def test_undeclared_query_parameters_are_refused_and_never_forwarded(
    gateway: RunningGateway, client: httpx.Client, target: str
) -> None:
    """Each route forwards only the parameters it declares: anything else is a 400
    ``request.unknown_parameter`` that neither echoes it nor reaches the vendor."""
    before = len(gateway.upstream.received)
    r = client.get(target + "&key=demo-crm-key")
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "request.unknown_parameter"
    assert body["request_id"] == r.headers["x-request-id"]
    assert "bob_example" not in r.text
    assert "zeta" not in r.text
    assert "callback" not in r.text
    assert len(gateway.upstream.received) == before


def test_hop_by_hop_headers_are_stripped_both_ways(tmp_path: Path) -> None:
    """RFC 9110 §7.6.1: Connection-named and hop-by-hop fields never cross the gateway."""
    with running_gateway(tmp_path, upstream_config=DemoUpstreamConfig(fault="set_cookie")) as gw:
        r = httpx.get(
            gw.url + "/klout/v2/user.json/5001/score",
            params=CRM,
            headers={
                "Connection": "keep-alive, X-Secret",
                "X-Secret": "s",
                "TE": "trailers",
                "Upgrade": "h2c",
                "Proxy-Authorization": "Basic eDp5",
            },
        )
        assert r.status_code == 200
        assert "set-cookie" not in r.headers
        assert "x-secret" not in r.headers
        seen = {name for name, _ in gw.upstream.received[-1].headers}
        assert not seen & {"x-secret", "te", "upgrade", "proxy-authorization"}


def test_upstream_credential_never_reaches_a_caller(client: httpx.Client) -> None:
    """Across answers, neutral answers and every kind of error, the demo upstream key
    appears in no status line, header or body a caller receives."""
    paths = [
        "/klout/v2/user.json/5001/score?key=demo-crm-key",
        "/klout/v2/identity.json/tw/1999?key=demo-crm-key",
        "/klout/1/klout.json?users=alice_example,carol_optedout&key=demo-crm-key",
        "/klout/v2/user.json/5001/score?key=demo-hr-key",
        "/klout/v2/user.json/5001/score?key=nope",
        "/klout/v2/identity.json/bogus/1?key=demo-crm-key",
        "/klout/v9/x?key=demo-crm-key",
        "/nowhere/v2/x?key=demo-crm-key",
    ]
    for path in paths:
        r = client.get(path)
        assert DEMO_UPSTREAM_KEY not in r.text
        assert all(DEMO_UPSTREAM_KEY not in v for v in r.headers.values())


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        pytest.param("/nowhere/v2/user.json/1", "upstream.unknown", 404, id="unknown-upstream"),
        pytest.param("/klout/v2/nothing", "route.unknown", 404, id="unknown-route"),
        pytest.param(
            "/klout/v2/%2e%2e/user.json/5001", "request.invalid_path", 400, id="encoded-dot-dot"
        ),
        pytest.param(
            "/klout/v2/user.json/5001%2Fscore", "request.invalid_path", 400, id="encoded-slash"
        ),
        pytest.param("/klout//v2/user.json/5001", "request.invalid_path", 400, id="empty-segment"),
        pytest.param("/klout/v2/user.json/50;01", "request.invalid_path", 400, id="matrix-param"),
        pytest.param(
            "/klout/v2/identity.json/tw/10a1", "request.invalid_subject", 400, id="bad-id"
        ),
        pytest.param(
            "/klout/1/klout.json?users=a,b,c,d,e,f", "request.invalid_subject", 400, id="six-users"
        ),
    ],
)
def test_bad_targets_get_a_problem_and_never_reach_the_upstream(
    gateway: RunningGateway, client: httpx.Client, path: str, code: str, status: int
) -> None:
    before = len(gateway.upstream.received)
    sep = "&" if "?" in path else "?"
    r = client.get(path + sep + "key=demo-crm-key")
    assert (r.status_code, r.json()["code"]) == (status, code)
    assert len(gateway.upstream.received) == before


def test_slow_upstream_times_out_with_504(tmp_path: Path) -> None:
    """A stalled upstream is cut off at the read timeout, not waited for."""
    with running_gateway(
        tmp_path,
        upstream_config=DemoUpstreamConfig(delay_seconds=5.0),
        limits=limits(read_timeout=0.3, total_timeout=0.6),
    ) as gw:
        started = time.monotonic()
        r = httpx.get(gw.url + "/klout/v2/user.json/5001/score", params=CRM, timeout=10)
        elapsed = time.monotonic() - started
        assert r.status_code == 504
        assert r.json()["code"] == "upstream.timeout"
        assert elapsed < 2.0


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        pytest.param("huge_body", 502, "upstream.response_too_large", id="huge-body"),
        pytest.param("endless_body", 502, "upstream.response_too_large", id="endless-body"),
        pytest.param("redirect", 502, "upstream.unexpected_redirect", id="redirect-to-metadata"),
        pytest.param("malformed_json", 502, "upstream.bad_response", id="malformed-json"),
        pytest.param("wrong_types", 502, "upstream.bad_response", id="wrong-types"),
    ],
)
def test_upstream_faults_become_problems_without_a_score(
    tmp_path: Path, fault: str, status: int, code: str
) -> None:
    with running_gateway(
        tmp_path,
        upstream_config=DemoUpstreamConfig(fault=fault),  # type: ignore[arg-type]
    ) as gw:
        r = httpx.get(gw.url + "/klout/v2/user.json/5001/score", params=CRM, timeout=10)
        assert (r.status_code, r.json()["code"]) == (status, code)
        assert "71.3" not in r.text


def test_refused_connection_is_502_unavailable(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    with running_gateway(tmp_path) as gw:
        gw.state.runtime.settings.upstream_overrides["klout"] = f"http://127.0.0.1:{free_port()}"  # type: ignore[union-attr]
        gw.state.runtime._upstreams.clear()  # type: ignore[union-attr]
        r = httpx.get(gw.url + "/klout/v2/user.json/5001/score", params=CRM)
        assert (r.status_code, r.json()["code"]) == (502, "upstream.unavailable")


def test_every_response_carries_a_request_id(client: httpx.Client) -> None:
    for path in [
        "/healthz",
        "/readyz",
        "/klout/v2/user.json/5001/score?key=demo-crm-key",
        "/x/y/z",
    ]:
        r = client.get(path)
        assert len(r.headers["x-request-id"]) == 32


def test_vendor_rate_is_held_before_the_upstream_is_called(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """Klout's 10 calls/s is enforced by the gateway (with a margin, at 9/s): calls
    beyond it are 429 problems with Retry-After, and the upstream never sees them."""
    answers = [client.get("/klout/v2/user.json/5001/score", params=CRM) for _ in range(25)]
    ok = [a for a in answers if a.status_code == 200]
    held = [a for a in answers if a.status_code == 429]
    assert len(ok) + len(held) == 25
    assert 9 <= len(ok) < 25
    assert all(a.json()["code"] == "limit.exceeded" for a in held)
    assert all(1 <= int(a.headers["retry-after"]) <= 60 for a in held)
    # The simulator enforces the same 10/s: it never had to refuse (no Mashery 403).
    assert sum(1 for seen in gateway.upstream.received if "score" in seen.path) == len(ok)


def test_upstream_throttling_is_a_429_never_a_score_of_zero(tmp_path: Path) -> None:
    """Mashery's 403 ERR_403_DEVELOPER_OVER_QPS becomes 429 upstream.throttled."""
    with running_gateway(tmp_path, upstream_config=DemoUpstreamConfig(calls_per_second=2)) as gw:
        with httpx.Client(base_url=gw.url) as c:
            answers = [c.get("/klout/v2/user.json/5001/score", params=CRM) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["code"] == "upstream.throttled"
        assert answers[2].headers["retry-after"] == "1"
        assert "score" not in answers[2].json()
