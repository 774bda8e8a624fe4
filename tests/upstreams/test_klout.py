"""The Klout adapter against the documented bodies (reference/upstream-apis.md §1)."""

from __future__ import annotations

import msgspec
import pytest

from gateway.upstreams.base import InvalidSubject, RouteMatch, Subject, UpstreamAnswer
from gateway.upstreams.klout import CONTENT_TYPE, KloutAdapter

KEY = b"k" * 32
NO_USERS = b'{"status": 200, "headers": [], "body": {"error": "No users"}}'
V1_SCORE = b'{"status": 200, "users": [{"twitter_screen_name": "damiancaruso", "kscore": 10.86}]}'
V2_SCORE = (
    b'{"score": 92.8064108888354, "scoreDelta": {"dayChange": 0.11171073367142981, '
    b'"weekChange": 0.07298920976049317, "monthChange": 0.19782863190633293}, "bucket": "90-100"}'
)
V2_IDENTITY = b'{"id": "635263", "network": "ks"}'
V2_USER = (
    b'{"kloutId": "635263", "nick": "jtimberlake", "score": {"score": 92.8064108888354, '
    b'"bucket": "90-100"}, "scoreDeltas": {"dayChange": 0.11, "weekChange": 0.07, "monthChange": 0.19}}'
)
V2_NOT_FOUND = b'{"error":404,"description":"Resource or user not found."}'
QPS = (("x-mashery-error-code", "ERR_403_DEVELOPER_OVER_QPS"), ("retry-after", "1"))
RATE = (("x-mashery-error-code", "ERR_403_DEVELOPER_OVER_RATE"),)
NOT_AUTHORIZED = (("x-mashery-error-code", "ERR_403_NOT_AUTHORIZED"),)


@pytest.fixture
def adapter() -> KloutAdapter:
    return KloutAdapter("klout", KEY)


def answer(status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> UpstreamAnswer:
    return UpstreamAnswer(status=status, content_type=CONTENT_TYPE, body=body, headers=headers)


def route(
    adapter: KloutAdapter, path: str, query: list[tuple[str, str]] | None = None
) -> RouteMatch:
    match = adapter.match("GET", path, query or [])
    assert match is not None
    return match


@pytest.mark.parametrize(
    ("path", "query", "template", "subjects"),
    [
        pytest.param(
            "/1/klout.json",
            [("users", "A,b")],
            "/1/klout.json",
            [("twitter_screen_name", "a"), ("twitter_screen_name", "b")],
            id="v1-list",
        ),
        pytest.param(
            "/1/soi/influencer_of.json",
            [("users", "x")],
            "/1/soi/influencer_of.json",
            [("twitter_screen_name", "x")],
            id="v1-soi",
        ),
        pytest.param(
            "/v2/identity.json/tw/1001",
            [],
            "/v2/identity.json/tw/{id}",
            [("twitter_id", "1001")],
            id="v2-tw",
        ),
        pytest.param(
            "/v2/identity.json/gp/2001",
            [],
            "/v2/identity.json/gp/{id}",
            [("google_id", "2001")],
            id="v2-gp",
        ),
        pytest.param(
            "/v2/identity.json/ig/3001",
            [],
            "/v2/identity.json/ig/{id}",
            [("instagram_id", "3001")],
            id="v2-ig",
        ),
        pytest.param(
            "/v2/identity.json/twitter",
            [("screenName", "Alice")],
            "/v2/identity.json/twitter",
            [("twitter_screen_name", "alice")],
            id="v2-name",
        ),
        pytest.param(
            "/v2/identity.json/klout/5001/tw",
            [],
            "/v2/identity.json/klout/{kloutId}/tw",
            [("klout_id", "5001")],
            id="v2-reverse",
        ),
        pytest.param(
            "/v2/user.json/5001",
            [],
            "/v2/user.json/{kloutId}",
            [("klout_id", "5001")],
            id="v2-user",
        ),
        pytest.param(
            "/v2/user.json/5001/influence",
            [],
            "/v2/user.json/{kloutId}/influence",
            [("klout_id", "5001")],
            id="v2-influence",
        ),
    ],
)
def test_routes_map_to_templates_and_subjects(
    adapter: KloutAdapter,
    path: str,
    query: list[tuple[str, str]],
    template: str,
    subjects: list[tuple[str, str]],
) -> None:
    match = route(adapter, path, query)
    assert match.template == template
    assert [(s.namespace, s.identifier) for s in match.subjects] == subjects


@pytest.mark.parametrize(
    ("path", "query"),
    [
        pytest.param("/1/klout.json", [("users", "a,b,c,d,e,f")], id="six-users"),
        pytest.param("/1/klout.json", [], id="no-users"),
        pytest.param("/1/klout.json", [("users", "a"), ("users", "b")], id="two-users-params"),
        pytest.param("/1/klout.json", [("users", "a,A")], id="same-person-twice"),
        pytest.param("/1/klout.json", [("users", "a\r\nX-Injected: 1")], id="crlf-in-name"),
        pytest.param("/1/klout.json", [("users", "sixteen_chars_xx")], id="name-too-long"),
        pytest.param("/v2/identity.json/tw/12ab", [], id="non-digit-id"),
        pytest.param("/v2/user.json/" + "9" * 21, [], id="id-too-long"),
    ],
)
def test_identifiers_outside_the_charset_are_refused(
    adapter: KloutAdapter, path: str, query: list[tuple[str, str]]
) -> None:
    with pytest.raises(InvalidSubject):
        adapter.match("GET", path, query)


@pytest.mark.parametrize(
    "path", ["/v2/identity.json/ks/1", "/v2/user.json/1/secret", "/2/klout.json", "/v2/"]
)
def test_unknown_routes_do_not_match(adapter: KloutAdapter, path: str) -> None:
    assert adapter.match("GET", path, []) is None


def test_only_get_is_matched(adapter: KloutAdapter) -> None:
    assert adapter.match("POST", "/v2/user.json/5001", []) is None


@pytest.mark.parametrize(
    ("path", "query", "status", "body", "headers", "outcome"),
    [
        pytest.param(
            "/1/klout.json", [("users", "damiancaruso")], 200, V1_SCORE, (), "found", id="v1-found"
        ),
        pytest.param(
            "/1/klout.json", [("users", "x")], 200, NO_USERS, (), "missing", id="v1-no-users-200"
        ),
        pytest.param(
            "/1/klout.json", [("users", "x")], 404, NO_USERS, (), "missing", id="v1-no-users-404"
        ),
        pytest.param("/v2/user.json/1/score", [], 200, V2_SCORE, (), "found", id="v2-score"),
        pytest.param("/v2/user.json/1", [], 200, V2_USER, (), "found", id="v2-user"),
        pytest.param("/v2/identity.json/tw/1", [], 200, V2_IDENTITY, (), "found", id="v2-identity"),
        pytest.param("/v2/user.json/1/score", [], 404, V2_NOT_FOUND, (), "missing", id="v2-404"),
        pytest.param("/v2/user.json/1/score", [], 404, b"", (), "missing", id="v2-404-empty"),
        pytest.param("/v2/user.json/1/score", [], 202, b"{}", (), "pending", id="queued-202"),
        pytest.param(
            "/v2/user.json/1/score",
            [],
            403,
            b"<h1>Developer Over Qps</h1>",
            QPS,
            "throttled",
            id="mashery-over-qps",
        ),
        pytest.param(
            "/1/klout.json",
            [("users", "x")],
            403,
            b"<h1>Developer Over Rate</h1>",
            RATE,
            "throttled",
            id="mashery-over-rate",
        ),
        pytest.param("/v2/user.json/1/score", [], 429, b"", (), "throttled", id="plain-429"),
        pytest.param(
            "/v2/user.json/1/score", [], 403, b"", NOT_AUTHORIZED, "error", id="bad-upstream-key"
        ),
        pytest.param(
            "/v2/user.json/1/score", [], 503, b"Service too busy", (), "error", id="overloaded"
        ),
        pytest.param("/v2/user.json/1/score", [], 200, b"{not json", (), "error", id="malformed"),
        pytest.param(
            "/v2/user.json/1/score",
            [],
            200,
            b'{"score": "92.8"}',
            (),
            "error",
            id="score-as-string",
        ),
        pytest.param(
            "/1/klout.json",
            [("users", "x")],
            200,
            b'{"status":200,"users":[1]}',
            (),
            "error",
            id="v1-wrong-types",
        ),
    ],
)
def test_classification_of_documented_answers(
    adapter: KloutAdapter,
    path: str,
    query: list[tuple[str, str]],
    status: int,
    body: bytes,
    headers: tuple[tuple[str, str], ...],
    outcome: str,
) -> None:
    assert (
        adapter.classify(route(adapter, path, query), answer(status, body, headers)).outcome
        == outcome
    )


def test_v1_partial_answer_is_classified_per_person(adapter: KloutAdapter) -> None:
    match = route(adapter, "/1/klout.json", [("users", "damiancaruso,carol")])
    result = adapter.classify(match, answer(200, V1_SCORE))
    assert result.per_subject == {
        Subject("twitter_screen_name", "damiancaruso"): "found",
        Subject("twitter_screen_name", "carol"): "missing",
    }


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        pytest.param(
            "/1/klout.json",
            [("users", "carol")],
            {"status": 200, "users": [{"twitter_screen_name": "carol", "kscore": 40.0}]},
            id="v1-score",
        ),
        pytest.param(
            "/1/users/topics.json",
            [("users", "carol")],
            {"status": 200, "users": [{"twitter_screen_name": "carol", "topics": []}]},
            id="v1-topics",
        ),
        pytest.param(
            "/1/soi/influenced_by.json",
            [("users", "carol")],
            {"status": 200, "users": [{"twitter_screen_name": "carol", "influencers": []}]},
            id="v1-influenced-by",
        ),
        pytest.param(
            "/v2/user.json/7/score",
            [],
            {
                "score": 40.0,
                "scoreDelta": {"dayChange": 0.0, "weekChange": 0.0, "monthChange": 0.0},
                "bucket": "40-49",
            },
            id="v2-score",
        ),
        pytest.param("/v2/user.json/7/topics", [], [], id="v2-topics"),
        pytest.param(
            "/v2/user.json/7/influence",
            [],
            {
                "myInfluencers": [],
                "myInfluencees": [],
                "myInfluencersCount": 0,
                "myInfluenceesCount": 0,
            },
            id="v2-influence",
        ),
    ],
)
def test_neutral_answers_take_the_success_shape(
    adapter: KloutAdapter, path: str, query: list[tuple[str, str]], expected: object
) -> None:
    match = route(adapter, path, query)
    neutral = adapter.neutral_answer(match, None, set(match.subjects), 40.0)
    assert (neutral.status, neutral.content_type) == (200, CONTENT_TYPE)
    assert msgspec.json.decode(neutral.body) == expected


def test_neutral_identity_yields_an_id_the_next_step_recognises(adapter: KloutAdapter) -> None:
    match = route(adapter, "/v2/identity.json/tw/1999")
    body = msgspec.json.decode(adapter.neutral_answer(match, None, set(match.subjects), 40.0).body)
    assert body["network"] == "ks"
    assert len(body["id"]) == 18
    assert body["id"].isdigit()
    follow = route(adapter, f"/v2/user.json/{body['id']}/score")
    assert follow.local_subjects == follow.subjects
    assert route(adapter, "/v2/user.json/635263/score").local_subjects == ()
    assert adapter.neutral_klout_id(Subject("twitter_id", "1999")) == body["id"]


def test_neutral_ids_depend_on_the_deployment_key() -> None:
    subject = Subject("twitter_id", "1999")
    assert KloutAdapter("k", KEY).neutral_klout_id(subject) != KloutAdapter(
        "k", b"j" * 32
    ).neutral_klout_id(subject)


def test_v1_merge_keeps_found_people_and_fills_the_rest(adapter: KloutAdapter) -> None:
    match = route(adapter, "/1/klout.json", [("users", "carol,damiancaruso")])
    merged = adapter.neutral_answer(
        match, answer(200, V1_SCORE), {Subject("twitter_screen_name", "carol")}, 40.0
    )
    assert msgspec.json.decode(merged.body)["users"] == [
        {"twitter_screen_name": "carol", "kscore": 40.0},
        {"twitter_screen_name": "damiancaruso", "kscore": 10.86},
    ]


def test_coarsen_turns_scores_into_buckets_and_drops_trends(adapter: KloutAdapter) -> None:
    match = route(adapter, "/v2/user.json/1")
    out = adapter.transform(match, answer(200, V2_USER), (), coarsen=True)
    doc = msgspec.json.decode(out.body)
    assert doc["score"] == {"score": 90.0, "bucket": "90-100"}
    assert "scoreDeltas" not in doc


def test_redact_removes_named_fields(adapter: KloutAdapter) -> None:
    match = route(adapter, "/v2/user.json/1")
    out = adapter.transform(match, answer(200, V2_USER), ("scoreDeltas", "score.bucket"), False)
    assert msgspec.json.decode(out.body) == {
        "kloutId": "635263",
        "nick": "jtimberlake",
        "score": {"score": 92.8064108888354},
    }


def test_real_and_neutral_answers_are_encoded_alike(adapter: KloutAdapter) -> None:
    """Upstream formatting (spaces after colons) never survives: both are compact."""
    match = route(adapter, "/v2/user.json/1/score")
    real = adapter.canonical(answer(200, V2_SCORE))
    neutral = adapter.neutral_answer(match, None, set(match.subjects), 92.8064108888354)
    assert b": " not in real.body
    assert real.content_type == neutral.content_type == CONTENT_TYPE
    assert real.body.startswith(b'{"score":92.8064108888354,"scoreDelta":{"dayChange":')
    assert neutral.body.startswith(b'{"score":92.8064108888354,"scoreDelta":{"dayChange":')
