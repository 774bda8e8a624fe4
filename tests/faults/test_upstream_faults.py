"""The upstream misbehaving: down, slow, failing, throttling, lying, leaking, exhausted.

Reliability catalogue (2) #1-#8 and #21. ``tests/test_proxy.py`` already checks the
status and code of the simulator's faults; these tests add what the caller must
never get (a score, the upstream's body or headers), the timing, the circuit
breaker, and the audit record each failed lookup leaves behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.demo.upstream import DemoUpstreamConfig, create_demo_upstream
from tests.faults.support import (
    ALICE_SCORE,
    CRM,
    SCORE_PATH,
    FixedAnswer,
    Gateway,
    Switchable,
    export_and_verify,
    gateway_at,
    gateway_in_front_of,
    roomy_policy,
)
from tests.support.gateway import limits, running_gateway
from tests.support.servers import free_port
from tests.support.tls import self_signed

ROOMY_UPSTREAM = DemoUpstreamConfig(calls_per_second=1e6, calls_per_day=10**9)
LEAKY_HEADERS = ("set-cookie", "keep-alive", "x-klout-backend", "proxy-authenticate", "location")


def _assert_audited(
    base_url: str, request_id: str, status: int, error: str, *, intent: bool = True
) -> None:
    """The failed lookup has its intent (if the vendor was to be called) and its
    outcome, with the code the caller got."""
    log = export_and_verify(base_url)
    assert log.result.ok, str(log.result)
    records = log.by_request(request_id)
    assert [r.kind for r in records] == (["lookup.intent", "lookup"] if intent else ["lookup"])
    outcome = log.lookup(request_id)
    assert (outcome.status, outcome.error) == (status, error)
    assert (outcome.client, outcome.upstream, outcome.route) == (
        "crm",
        "klout",
        "/v2/user.json/{kloutId}/score",
    )


def _assert_problem_without_score(r: httpx.Response, status: int, code: str) -> None:
    assert (r.status_code, r.headers["content-type"]) == (status, "application/problem+json")
    body = r.json()
    assert body["code"] == code
    assert "score" not in body
    assert ALICE_SCORE not in r.text
    for name in LEAKY_HEADERS:
        assert name not in r.headers


def test_refused_connection_is_a_fast_502_and_audited(tmp_path: Path) -> None:
    """#1: nothing listens at the upstream's address: 502 upstream.unavailable well
    within the connect timeout, audited with that code."""
    with gateway_at(
        f"http://127.0.0.1:{free_port()}", tmp_path, limits=limits(connect_timeout=1.0)
    ) as gw:
        started = time.monotonic()
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
        elapsed = time.monotonic() - started
        _assert_problem_without_score(r, 502, "upstream.unavailable")
        assert elapsed < 1.0
        _assert_audited(gw.url, r.headers["x-request-id"], 502, "upstream.unavailable")


@pytest.mark.parametrize(
    ("config", "status", "code", "upstream_text"),
    [
        # Klout's own overload answer (reference: 503 "Service too busy").
        pytest.param(
            DemoUpstreamConfig(overload_rate=1.0),
            502,
            "upstream.unavailable",
            "Service too busy",
            id="overload-503",
        ),
        pytest.param(
            DemoUpstreamConfig(fault="malformed_json"),
            502,
            "upstream.bad_response",
            '{"score":71',
            id="malformed-json",
        ),
        pytest.param(
            DemoUpstreamConfig(fault="wrong_types"),
            502,
            "upstream.bad_response",
            '"71.3"',
            id="wrong-types",
        ),
        pytest.param(
            DemoUpstreamConfig(fault="redirect"),
            502,
            "upstream.unexpected_redirect",
            "169.254.169.254",
            id="redirect-to-metadata",
        ),
        pytest.param(
            DemoUpstreamConfig(fault="huge_body", huge_body_bytes=2 << 20),
            502,
            "upstream.response_too_large",
            "kscore",
            id="huge-body",
        ),
        pytest.param(
            DemoUpstreamConfig(fault="endless_body"),
            502,
            "upstream.response_too_large",
            "kscore",
            id="endless-body",
        ),
        pytest.param(
            DemoUpstreamConfig(fault="stall_headers"),
            504,
            "upstream.timeout",
            "",
            id="stalled-headers",
        ),
        pytest.param(
            DemoUpstreamConfig(delay_seconds=5.0), 504, "upstream.timeout", "", id="slow-answer"
        ),
    ],
)
def test_upstream_fault_is_an_audited_problem_never_a_score(
    tmp_path: Path, config: DemoUpstreamConfig, status: int, code: str, upstream_text: str
) -> None:
    """#2-#6: the caller gets a problem (no score, none of the upstream's body or
    headers), the upstream was asked once, and the audit log has the outcome."""
    with running_gateway(
        tmp_path, upstream_config=config, limits=limits(read_timeout=0.3, total_timeout=0.6)
    ) as gw:
        started = time.monotonic()
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
        assert time.monotonic() - started < 2.0
        _assert_problem_without_score(r, status, code)
        if upstream_text:
            assert upstream_text not in r.text
        assert len(gw.upstream.received) == 1  # no retry, and the redirect not followed
        _assert_audited(gw.url, r.headers["x-request-id"], status, code)


@pytest.mark.parametrize(
    ("upstream_retry_after", "expected"),
    [
        pytest.param("99999", "60", id="huge"),
        pytest.param("0", "1", id="zero"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", "1", id="http-date"),
        pytest.param("-5", "1", id="negative"),
    ],
)
def test_upstream_429_retry_after_is_capped(
    tmp_path: Path, upstream_retry_after: str, expected: str
) -> None:
    """#3: the upstream's Retry-After reaches the caller only within [1, 60] seconds;
    the upstream is asked once (no retry storm) and its body is not relayed."""
    upstream = FixedAnswer(
        429,
        [(b"content-type", b"application/json"), (b"retry-after", upstream_retry_after.encode())],
        b'{"error":429,"description":"slow down, internal-node-7"}',
    )
    with gateway_in_front_of(upstream, tmp_path) as gw:
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
        _assert_problem_without_score(r, 429, "upstream.throttled")
        assert r.headers["retry-after"] == expected
        assert "internal-node-7" not in r.text
        assert upstream.received == 1
        _assert_audited(gw.url, r.headers["x-request-id"], 429, "upstream.throttled")


def test_mashery_daily_quota_retry_after_is_capped(tmp_path: Path) -> None:
    """Mashery's ERR_403_DEVELOPER_OVER_RATE says "retry at UTC midnight" (up to a
    day); the caller is told to come back within a minute at most."""
    with running_gateway(tmp_path, upstream_config=DemoUpstreamConfig(calls_per_day=1)) as gw:
        first = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
        assert first.status_code == 200
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
        _assert_problem_without_score(r, 429, "upstream.throttled")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "Developer Over Rate" not in r.text


def test_leaky_upstream_headers_never_reach_the_caller(tmp_path: Path) -> None:
    """#7: Set-Cookie, Keep-Alive, Proxy-Authenticate and a header the upstream's
    Connection names are dropped, on answers and on problems alike."""
    with running_gateway(
        tmp_path, upstream_config=DemoUpstreamConfig(fault="set_cookie", calls_per_second=1)
    ) as gw:
        answers = [httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10) for _ in range(2)]
    # The first is served, the second throttled by Mashery (its 403 carries the headers too).
    assert [a.status_code for a in answers] == [200, 429]
    for r in answers:
        for name in LEAKY_HEADERS:
            assert name not in r.headers
        assert "x-klout-backend" not in r.headers.get("connection", "")
        assert "klout_session" not in r.text


def test_error_answer_headers_never_reach_the_caller(tmp_path: Path) -> None:
    upstream = FixedAnswer(
        500,
        [
            (b"content-type", b"text/html"),
            (b"set-cookie", b"backend=7; Path=/"),
            (b"location", b"http://internal.example/"),
            (b"x-backend-trace", b"stack at node 7"),
        ],
        b"<h1>Internal Server Error at node 7</h1>",
    )
    with gateway_in_front_of(upstream, tmp_path) as gw:
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
    _assert_problem_without_score(r, 502, "upstream.unavailable")
    assert "x-backend-trace" not in r.headers
    assert "node 7" not in r.text


def test_endless_body_keeps_memory_flat(tmp_path: Path) -> None:
    """#6: twenty endless answers cost no more memory than the 1 MiB cap each."""

    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    with (
        running_gateway(
            tmp_path, upstream_config=DemoUpstreamConfig(fault="endless_body", calls_per_second=1e6),
            policies=roomy_policy(tmp_path),
        ) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as client,
    ):  # fmt: skip
        assert client.get(SCORE_PATH, params=CRM).status_code == 502  # warm up
        before = rss()
        statuses = {client.get(SCORE_PATH, params=CRM).status_code for _ in range(20)}
        grown = rss() - before
    assert statuses == {502}
    assert grown < 64 << 20, f"RSS grew by {grown >> 20} MiB"


# -- circuit breaker ----------------------------------------------------------------


@pytest.fixture
def switchable(tmp_path: Path) -> Iterator[tuple[Gateway, Switchable]]:
    upstream = Switchable(create_demo_upstream(ROOMY_UPSTREAM))
    with gateway_in_front_of(upstream, tmp_path, policies=roomy_policy(tmp_path)) as gw:
        yield gw, upstream


def test_circuit_opens_fails_fast_and_recovers(switchable: tuple[Gateway, Switchable]) -> None:
    """#1: after five consecutive failures the gateway answers 503 circuit_open at once
    without calling the upstream; after the cooldown one probe goes through; a good
    probe closes the circuit, a bad one opens it again."""
    gw, upstream = switchable
    runtime, holder = gw.state.runtime, gw.state.policy
    assert runtime is not None
    assert holder is not None
    klout = runtime.upstream(holder.current, "klout")
    assert klout is not None
    # No setting exposes the cooldown (10 s); the breaker's own attribute is the seam.
    klout.breaker.cooldown = 0.5
    with httpx.Client(base_url=gw.url, timeout=10) as client:

        def lookup() -> tuple[httpx.Response, float]:
            started = time.monotonic()
            r = client.get(SCORE_PATH, params=CRM)
            return r, time.monotonic() - started

        upstream.failing = True
        for _ in range(klout.breaker.threshold):
            _assert_problem_without_score(lookup()[0], 502, "upstream.unavailable")
        assert upstream.received == klout.breaker.threshold

        fast = [lookup() for _ in range(5)]
        for r, elapsed in fast:
            _assert_problem_without_score(r, 503, "upstream.circuit_open")
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert elapsed < 0.2
        assert upstream.received == klout.breaker.threshold  # not contacted while open

        time.sleep(0.6)  # one probe; the upstream still fails, so the circuit reopens
        _assert_problem_without_score(lookup()[0], 502, "upstream.unavailable")
        _assert_problem_without_score(lookup()[0], 503, "upstream.circuit_open")
        assert upstream.received == klout.breaker.threshold + 1

        upstream.failing = False
        time.sleep(0.6)
        recovered = [lookup()[0] for _ in range(3)]
        assert [r.status_code for r in recovered] == [200, 200, 200]
        assert ALICE_SCORE in recovered[0].text
        assert not klout.breaker.open
    # An open circuit refuses before any intent, like every other refusal that
    # local answers meet too (refusal parity): one record, with everything.
    _assert_audited(
        gw.url, fast[0][0].headers["x-request-id"], 503, "upstream.circuit_open", intent=False
    )


# -- pool exhaustion and TLS -----------------------------------------------------------


def test_exhausted_connection_pool_is_a_fast_503_busy(tmp_path: Path) -> None:
    with running_gateway(
        tmp_path,
        upstream_config=DemoUpstreamConfig(delay_seconds=1.0, calls_per_second=1e6),
        policies=roomy_policy(tmp_path),
        limits=limits(upstream_connections=2),
    ) as gw:
        answers: list[tuple[int, str, float]] = []

        def one() -> None:
            started = time.monotonic()
            r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
            answers.append((r.status_code, r.text, time.monotonic() - started))

        workers = [threading.Thread(target=one) for _ in range(4)]
        for worker in workers:
            worker.start()
            time.sleep(0.05)  # the first two take the pool
        for worker in workers:
            worker.join()
    held = sorted(answers, key=lambda a: a[2])[:2]  # the two that could not get a connection
    assert all(status == 503 and "upstream.busy" in text for status, text, _ in held), answers
    assert all(elapsed < 1.0 for _, _, elapsed in held), answers


def _self_signed(directory: Path) -> dict[str, str]:
    certfile, keyfile = self_signed(directory)
    return {"ssl_keyfile": str(keyfile), "ssl_certfile": str(certfile)}


def test_untrusted_certificate_is_refused_never_downgraded(tmp_path: Path) -> None:
    """#8: a self-signed upstream certificate is refused (no verify=False, no http
    fallback): 502, no score, and no HTTP request ever reached the upstream."""
    upstream = create_demo_upstream(ROOMY_UPSTREAM)
    with gateway_in_front_of(
        upstream,
        tmp_path / "var",
        upstream_serve_options=_self_signed(tmp_path),
        upstream_scheme="https",
    ) as gw:
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
        assert r.status_code == 502
        _assert_problem_without_score(r, 502, r.json()["code"])
        assert r.json()["code"] in {"upstream.tls_error", "upstream.unavailable"}
        assert len(upstream.received) == 0
        _assert_audited(gw.url, r.headers["x-request-id"], 502, r.json()["code"])


def test_certificate_failure_has_its_own_code(tmp_path: Path) -> None:
    with gateway_in_front_of(
        create_demo_upstream(ROOMY_UPSTREAM),
        tmp_path / "var",
        upstream_serve_options=_self_signed(tmp_path),
        upstream_scheme="https",
    ) as gw:
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=10)
    assert (r.status_code, r.json()["code"]) == (502, "upstream.tls_error")
