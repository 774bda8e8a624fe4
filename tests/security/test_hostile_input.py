"""Hostile requests (reliability.md catalogue 1) replayed as raw bytes to the real gateway.

httpx and TestClient normalise framing, header names and paths before anything
is sent, so every case here goes over a plain socket to the gateway served by
uvicorn exactly as ``gateway serve`` serves it (``conftest.PRODUCTION_SERVER``),
in front of the real Klout simulator, whose request log shows what got through.

The corpus is data: ``corpus/NN-name.http`` holds the bytes and
``corpus/cases.yaml`` the expected outcome and the reason for it. A new hostile
input is a new file and five lines of YAML. Framing errors are refused by
uvicorn/httptools before the app runs (a plain-text 400 and a closed
connection); everything after that is refused by the gateway as
``application/problem+json`` before any upstream I/O.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import threading
import time
from pathlib import Path
from typing import Literal

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.demo.upstream import DEMO_UPSTREAM_KEY
from gateway.server import BODY_TIMEOUT, HEADER_TIMEOUT, GuardedHttpToolsProtocol
from tests.security.conftest import PRODUCTION_SERVER, LogRecorder
from tests.security.wire import Exchange, exchange, render
from tests.support.gateway import RunningGateway

CORPUS = Path(__file__).parent / "corpus"
PROBLEM = "application/problem+json"
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
# A request of the corpus may take this long at most, whatever it is.
HARD_TIMEOUT = 5.0


class Case(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entry of ``corpus/cases.yaml``; its header comment explains each field."""

    file: str
    catalogue: int
    status: tuple[int, ...]
    by: Literal["gateway", "server", "either"] | None = None
    code: str | None = None
    closed: bool = False
    silent_close_ok: bool = False
    upstream: Literal["none", "forwarded", "any"] = "none"
    upstream_lacks: tuple[str, ...] = ()
    upstream_credential: bool = False
    upstream_method: str | None = None
    not_forwarded: tuple[str, ...] = ()
    not_in_response: tuple[str, ...] = ()
    own_request_id: bool = False
    validation_invalid: bool = False
    no_control_in_logs: bool = False
    max_seconds: float = 2.0
    gateway: Literal["hostile", "redirecting"] = "hostile"
    mode: Literal["exchange", "slow"] = "exchange"
    xfail: str | None = None
    note: str | None = None

    @property
    def template(self) -> bytes:
        return (CORPUS / f"{self.file}.http").read_bytes()


CASES: list[Case] = msgspec.convert(
    yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8")), list[Case]
)
BY_FILE = {case.file: case for case in CASES}


def params(cases: list[Case]) -> list[object]:
    marks = {
        case.file: [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        for case in cases
    }
    return [pytest.param(case, id=case.file, marks=marks[case.file]) for case in cases]


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def host_of(gateway: RunningGateway) -> str:
    return gateway.url.removeprefix("http://")


def send(gateway: RunningGateway, template: bytes, timeout: float = HARD_TIMEOUT) -> Exchange:
    return exchange(port_of(gateway), render(template, host_of(gateway)), timeout=timeout)


# -- the manifest ------------------------------------------------------------------


def test_every_corpus_file_has_exactly_one_case() -> None:
    files = sorted(p.stem for p in CORPUS.glob("*.http"))
    named = [case.file for case in CASES]
    assert len(named) == len(set(named)), "a file is listed twice in cases.yaml"
    assert sorted(named) == files


def test_the_manifest_covers_every_row_of_the_catalogue() -> None:
    assert {case.catalogue for case in CASES} >= set(range(1, 37))


def test_server_options_match_production() -> None:
    """The fixture serves with the options of ``gateway serve``, httptools included."""
    assert PRODUCTION_SERVER["http"] is GuardedHttpToolsProtocol
    assert importlib.util.find_spec("httptools") is not None


# -- the corpus, one request per case ----------------------------------------------


def check(case: Case, gateway: RunningGateway, ex: Exchange, upstream_before: int) -> None:
    """Everything true of every case, then what the manifest says of this one."""
    raw = ex.raw
    assert DEMO_UPSTREAM_KEY.encode() not in raw, "the upstream credential reached the caller"
    assert not ex.timed_out, f"no answer and no close within {HARD_TIMEOUT}s"
    assert len(ex.responses) <= 1, "one request got several responses (smuggling?)"
    assert not ex.leftover, f"bytes after the response: {ex.leftover[:80]!r}"

    response = ex.response
    if response is None:
        assert case.silent_close_ok, "the connection closed without an answer"
        assert ex.closed
    else:
        assert ex.first_response_after is not None
        assert ex.first_response_after <= case.max_seconds, (
            f"answered after {ex.first_response_after:.2f}s (limit {case.max_seconds}s)"
        )
        assert response.status in case.status, (response.status, response.body[:300])
        content_type = response.header("content-type") or ""
        # Ours are problem+json; uvicorn's own refusals are plain text and close.
        if 400 <= response.status < 500 and content_type != PROBLEM:
            assert content_type.startswith("text/plain"), content_type
            assert ex.closed, "the server refused the bytes but kept the connection"
        if case.by == "gateway":
            assert content_type == PROBLEM
            problem = msgspec.json.decode(response.body)
            assert problem["status"] == response.status
            if response.status < 500:  # a 4xx is never titled as our fault
                assert problem["title"] != "Internal error", problem
            if case.code is not None:
                assert problem["code"] == case.code
        elif case.by == "server":
            assert content_type != PROBLEM
        if case.own_request_id:
            assert REQUEST_ID.fullmatch(response.header("x-request-id") or "")
        if case.validation_invalid and response.status == 200:
            assert msgspec.json.decode(response.body)["valid"] is False
        for text in case.not_in_response:
            assert text.encode() not in raw
    if case.closed:
        assert ex.closed, "the connection stayed open after a framing error"

    received = list(gateway.upstream.received)[upstream_before:]
    if case.upstream == "none":
        assert received == [], [r.path for r in received]
    elif case.upstream == "forwarded":
        assert len(received) == 1, [r.path for r in received]
    upstream_host = gateway.upstream_url.removeprefix("http://")
    for seen in received:
        # Whatever the request said, only the configured simulator was asked.
        assert dict(seen.headers).get("host") == upstream_host
        names = {name for name, _ in seen.headers}
        assert not names & set(case.upstream_lacks), names & set(case.upstream_lacks)
        for text in case.not_forwarded:
            assert not seen.mentions(text), text
        if case.upstream_credential:
            assert f"key={DEMO_UPSTREAM_KEY}" in seen.query_string
        if case.upstream_method is not None:
            assert seen.method == case.upstream_method


@pytest.mark.parametrize(
    "case", params([c for c in CASES if c.mode == "exchange" and c.gateway == "hostile"])
)
def test_hostile_request(
    case: Case, hostile_gateway: RunningGateway, gateway_logs: LogRecorder
) -> None:
    before = len(hostile_gateway.upstream.received)
    ex = send(hostile_gateway, case.template)
    check(case, hostile_gateway, ex, before)
    errors = [r.getMessage() for r in gateway_logs.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], errors
    if case.no_control_in_logs:
        for record in gateway_logs.records:
            message = record.getMessage()
            assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", message), message


@pytest.mark.parametrize("case", params([c for c in CASES if c.gateway == "redirecting"]))
def test_hostile_upstream_answer(
    case: Case, redirecting_gateway: RunningGateway, gateway_logs: LogRecorder
) -> None:
    before = len(redirecting_gateway.upstream.received)
    ex = send(redirecting_gateway, case.template)
    check(case, redirecting_gateway, ex, before)
    assert ex.response is not None
    assert ex.response.header("location") is None


# -- slow clients ------------------------------------------------------------------

SLOW = [c for c in CASES if c.mode == "slow"]
TRICKLED_BYTES = 3  # sent one a second at the end of the request


@pytest.mark.parametrize("case", params(SLOW))
def test_a_slow_client_does_not_hold_up_others(case: Case, hostile_gateway: RunningGateway) -> None:
    """While one client sends its last bytes a second apart, others are answered at once;
    the slow one gets its answer as soon as its request is complete."""
    data = render(case.template, host_of(hostile_gateway))
    head, tail = data[:-TRICKLED_BYTES], data[-TRICKLED_BYTES:]
    normal = render(BY_FILE["00-valid-lookup"].template, host_of(hostile_gateway))
    with socket.create_connection(("127.0.0.1", port_of(hostile_gateway)), timeout=5) as slow:
        slow.sendall(head)
        for byte in tail:
            time.sleep(1.0)
            started = time.monotonic()
            other = exchange(port_of(hostile_gateway), normal, timeout=2.0)
            assert other.response is not None
            assert other.response.status == 200
            assert time.monotonic() - started < 1.0, "a slow client held up another"
            slow.sendall(bytes([byte]))
        sent = time.monotonic()
        answer = _read_until_closed(slow, deadline=sent + 3.0)
    assert time.monotonic() - sent < 2.0
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match is not None, answer[:100]
    assert int(match.group(1)) in case.status
    assert DEMO_UPSTREAM_KEY.encode() not in answer


def _read_until_closed(sock: socket.socket, *, deadline: float) -> bytes:
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_stalled_clients_are_disconnected(hostile_gateway: RunningGateway) -> None:
    """A client that stops mid-headers, or mid-body, is closed within the header or
    body deadline plus a margin (both stalls are watched at once to bound the test)."""
    bound = max(HEADER_TIMEOUT, BODY_TIMEOUT) + 2.0
    results: dict[str, bool] = {}

    def stall(case: Case) -> None:
        data = render(case.template, host_of(hostile_gateway))
        with socket.create_connection(("127.0.0.1", port_of(hostile_gateway))) as sock:
            sock.sendall(data[:-TRICKLED_BYTES])
            started = time.monotonic()
            _read_until_closed(sock, deadline=started + bound)
            results[case.file] = time.monotonic() - started < bound

    threads = [threading.Thread(target=stall, args=(case,)) for case in SLOW]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(bound + 2.0)
    assert results == {case.file: True for case in SLOW}


# -- mutations of a valid request (Hypothesis) -------------------------------------

VALID = BY_FILE["00-valid-lookup"]
INSERTABLE = (b"\r", b"\n", b"\x00", b" ", b"\t")


@st.composite
def mutated_requests(draw: st.DrawFn, request: bytes) -> bytes:
    """The valid request with a few bytes inserted or a header line duplicated."""
    data = request
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.sampled_from(INSERTABLE)) + data[at:]
        else:
            lines = data.split(b"\r\n")
            if len(lines) > 2:
                index = draw(st.integers(1, len(lines) - 1))
                lines.insert(index, lines[index])
                data = b"\r\n".join(lines)
    return data


@pytest.fixture(scope="module")
def valid_request(hostile_gateway: RunningGateway) -> bytes:
    return render(VALID.template, host_of(hostile_gateway))


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_mutated_requests_never_cause_a_5xx_a_hang_or_a_leak(
    data: st.DataObject, hostile_gateway: RunningGateway, valid_request: bytes
) -> None:
    request = data.draw(mutated_requests(valid_request), label="request")
    ex = exchange(port_of(hostile_gateway), request, timeout=HARD_TIMEOUT)
    assert not ex.timed_out
    assert DEMO_UPSTREAM_KEY.encode() not in ex.raw
    assert all(r.status < 500 for r in ex.responses), [r.status for r in ex.responses]
