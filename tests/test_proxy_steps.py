"""Each step of the request path alone, over an in-memory transport (no servers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from gateway.errors import PolicyDenied, UpstreamError
from gateway.proxy import _Lookup
from gateway.transport import UpstreamRequest
from gateway.upstreams.base import Subject, UpstreamAnswer
from tests.support.proxy import ProxyRig, proxy_rig

JSON = "application/json; charset=utf-8"
CRM = {"Authorization": "Bearer demo-crm-key"}


def _klout(request: UpstreamRequest) -> UpstreamAnswer:
    """Alice is known by Twitter id 1001 and kloutId 5001; everyone else is a 404."""
    if "/v2/identity.json/tw/1001" in request.url:
        return UpstreamAnswer(status=200, content_type=JSON, body=b'{"id":"5001","network":"ks"}')
    if "/v2/user.json/5001/score" in request.url:
        body = b'{"score":71.3,"scoreDelta":{"dayChange":0.1},"bucket":"70-79"}'
        return UpstreamAnswer(status=200, content_type=JSON, body=body)
    return UpstreamAnswer(status=404, content_type=JSON, body=b'{"error":404}')


def _scope(target: str, headers: dict[str, str]) -> dict[str, object]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"gateway.test")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


def _run(tmp_path: Path, test: object, handler: object = _klout) -> None:
    async def main() -> None:
        async with proxy_rig(tmp_path, handler) as rig:  # type: ignore[arg-type]
            await test(rig)  # type: ignore[operator]

    asyncio.run(main())


def test_identify_names_client_purpose_route_and_subjects(tmp_path: Path) -> None:
    """identify() reads who asks, for what, and about whom, without calling anyone."""

    async def check(rig: ProxyRig) -> None:
        request = rig.proxy.identify(_scope("/klout/v2/identity.json/tw/1001", CRM), _Lookup())
        assert (request.client.id, request.purpose) == ("crm", "sales")
        assert request.route.template == "/v2/identity.json/tw/{id}"
        assert request.route.subjects == (Subject("twitter_id", "1001"),)
        assert rig.transport.requests == []  # type: ignore[attr-defined]

    _run(tmp_path, check)


def test_decide_plans_a_local_answer_for_an_issued_id(tmp_path: Path) -> None:
    """decide() sends nothing upstream for a kloutId the gateway issued itself
    (settle_ids() recognises it from the store, on any replica)."""

    async def check(rig: ProxyRig) -> None:
        issued = (await rig.get("/klout/v2/identity.json/tw/1999", CRM)).body
        klout_id = msgspec.json.decode(issued)["id"]
        lookup = _Lookup()
        scope = _scope(f"/klout/v2/user.json/{klout_id}/score", CRM)
        request = await rig.proxy.settle_ids(rig.proxy.identify(scope, lookup))
        plan = rig.proxy.decide(request, lookup)
        assert plan.forward is None
        assert plan.local_outcome == "missing"

    _run(tmp_path, check)


@pytest.mark.parametrize(
    ("purpose", "rule"),
    [
        pytest.param("marketing.communications.email", "policy.purpose-not-registered", id="other"),
        pytest.param("Sales", "policy.unknown-purpose", id="not-in-vocabulary"),
    ],
)
def test_unregistered_purpose_is_denied_by_a_named_policy_rule(
    tmp_path: Path, purpose: str, rule: str
) -> None:
    """A purpose the client may not use is refused by the policy engine: the problem
    and the audit record name the rule, and the record keeps a known purpose."""

    async def check(rig: ProxyRig) -> None:
        lookup = _Lookup()
        headers = {**CRM, "X-Purpose": purpose}
        request = rig.proxy.identify(_scope("/klout/v2/user.json/5001/score", headers), lookup)
        with pytest.raises(PolicyDenied) as denied:
            rig.proxy.decide(request, lookup)
        assert denied.value.code == "purpose.not_registered"
        assert denied.value.extra["rule"] == rule
        answer = await rig.get("/klout/v2/user.json/5001/score", headers)
        assert answer.status == 403
        assert msgspec.json.decode(answer.body)["rule"] == rule
        record = rig.records()[-1]
        assert rule in record.rules
        assert record.decision == "deny"
        known = purpose if purpose == "marketing.communications.email" else None
        assert record.purpose == known
        assert rig.transport.requests == []  # type: ignore[attr-defined]

    _run(tmp_path, check)


def test_fetch_asks_the_transport_with_the_upstream_key_only(tmp_path: Path) -> None:
    """The transport receives the upstream's credential, never the caller's key."""

    async def check(rig: ProxyRig) -> None:
        answer = await rig.get("/klout/v2/user.json/5001/score?key=demo-crm-key")
        assert answer.status == 200
        (sent,) = rig.transport.requests  # type: ignore[attr-defined]
        assert sent.url == "http://klout.test/v2/user.json/5001/score?key=upstream-key"
        assert "demo-crm-key" not in repr(sent.headers)
        kinds = [r.kind for r in rig.records() if r.request_id == answer.headers["x-request-id"]]
        assert kinds == ["lookup.intent", "lookup"]

    _run(tmp_path, check)


def test_answer_neutralizes_a_404_in_the_success_shape(tmp_path: Path) -> None:
    async def check(rig: ProxyRig) -> None:
        answer = await rig.get("/klout/v2/user.json/5999/score", CRM)
        assert answer.status == 200
        assert msgspec.json.decode(answer.body)["score"] == 40.0

    _run(tmp_path, check)


def test_transport_failures_open_the_breaker(tmp_path: Path) -> None:
    """Five failed calls open the circuit: the sixth is refused without a call."""

    def down(request: UpstreamRequest) -> UpstreamAnswer:
        raise UpstreamError("the upstream could not be reached", code="upstream.unavailable")

    async def check(rig: ProxyRig) -> None:
        codes = []
        for _ in range(6):
            answer = await rig.get("/klout/v2/user.json/5001/score", CRM)
            codes.append(msgspec.json.decode(answer.body)["code"])
        assert codes == ["upstream.unavailable"] * 5 + ["upstream.circuit_open"]
        assert len(rig.transport.requests) == 5  # type: ignore[attr-defined]

    _run(tmp_path, check, down)


def test_query_parsing_matches_the_standard_library() -> None:
    """The fast split gives parse_qsl's pairs, or its refusal, for every query:
    blank values, missing '=', repeated '&', escapes, '+', and the field limit."""
    import random
    from urllib.parse import parse_qsl

    from gateway.proxy import MAX_QUERY_FIELDS, _parse_query

    def reference(qs: str) -> list[tuple[str, str]] | str:
        try:
            return parse_qsl(qs, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return "refused"

    def ours(qs: str) -> list[tuple[str, str]] | str:
        try:
            return _parse_query(qs)
        except ValueError:
            return "refused"

    rnd = random.Random(13)
    cases = ["", "key=demo", "a&b=", "=x", "a=b=c", "&&a=1&&", "a=%41+b", "k=v;w=z"]
    cases += ["&".join(["a=b"] * n) for n in (63, 64, 65)] + ["&" * 63, "&" * 64]
    cases += [
        "".join(rnd.choice("ab=&;%+2 x") for _ in range(rnd.randint(0, 16))) for _ in range(20000)
    ]
    for qs in cases:
        assert ours(qs) == reference(qs), qs


def test_path_checks_and_url_building_match_the_per_segment_and_stdlib_versions() -> None:
    """One regex over the path accepts exactly what the per-segment check did; the
    upstream URL's path and query are what quote() and urlencode() give."""
    import random
    import re
    from urllib.parse import quote, urlencode

    from gateway.proxy import _encode_query, _quote_path, _valid_path

    segment = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@-]+")

    def per_segment(text: str) -> bool:
        parts = text.split("/")
        return not (
            parts[0] != ""
            or len(parts) < 3
            or any(s in ("", ".", "..") or not segment.fullmatch(s) for s in parts[1:])
        )

    rnd = random.Random(17)
    paths = ["/klout/v2/user.json/1/score", "/a/.", "/a/..", "/a/...", "/a/b/", "//a/b", "/a"]
    paths += ["/a/b\n", "/a/./b", "/a/b/..", "/a/.b", "/a/b..", "/%41/b", "/a/b c"]
    paths += [
        "".join(rnd.choice("/ab.%~ -") for _ in range(rnd.randint(0, 10))) for _ in range(30000)
    ]
    paths += [
        "/" + "/".join(rnd.choice(["a", ".", "..", "...", "", "b.c"]) for _ in range(3))
        for _ in range(3000)
    ]
    assert sum(map(per_segment, paths)) > 400  # both outcomes are well represented
    for text in paths:
        assert _valid_path(text) == per_segment(text), text

    alphabet = "aZ09/:@!$&'()*+,;=._~- %é\x00?#[]\"<>"
    for _ in range(20000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
        assert _quote_path(text) == quote(text, safe="/:@!$&'()*+,;=-._~"), text
        pairs = [
            ("".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 5))), text[:5])
            for _ in range(rnd.randint(1, 3))
        ]
        assert _encode_query(pairs) == urlencode(pairs), pairs


def test_forwardable_headers_are_the_few_allowed_less_those_connection_names() -> None:
    from gateway.headers import InboundHeaders

    raw = [
        (b"host", b"gw"),
        (b"accept", b"application/json"),
        (b"accept-language", b"de"),
        (b"content-type", b"application/json"),
        (b"user-agent", b"crm/1.0"),
        (b"authorization", b"Bearer secret"),
    ]
    assert InboundHeaders(raw).forwardable() == [
        ("accept", "application/json"),
        ("accept-language", "de"),
        ("content-type", "application/json"),
    ]
    named = InboundHeaders([*raw, (b"connection", b"keep-alive, Accept-Language")])
    assert named.forwardable() == [
        ("accept", "application/json"),
        ("content-type", "application/json"),
    ]
    assert InboundHeaders([(b"host", b"gw"), (b"connection", b"accept")]).forwardable() == []
