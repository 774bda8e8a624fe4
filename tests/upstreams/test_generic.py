"""The YAML-configured adapter, shaped as People Data Labs and Kred (upstream-apis.md §2-3)."""

from __future__ import annotations

import msgspec
import pytest

from gateway.policies.model import GenericAdapter as GenericConfig
from gateway.upstreams.base import InvalidSubject, UpstreamAnswer
from gateway.upstreams.generic import GenericAdapter

PDL = GenericConfig(
    subject="query:profile",
    score_path="likelihood",
    neutral_body='{"status": 200, "likelihood": {score}, "data": {}}',
    missing_status=[404],
    throttled_status=[429],
)
KRED = GenericConfig(
    subject="query:term",
    score_path="data.0.influence",
    missing_path="data",
    subject_separator=",",
    neutral_body='{"data": [{"influence": {score}, "outreach": 0}]}',
)
PDL_404 = (
    b'{"status": 404, "error": {"type": "not_found", '
    b'"message": "No records were found matching your request"}}'
)
PDL_429 = b'{"status": 429, "error": {"type": "rate_limit_error", "message": "too quick"}}'


def ans(status: int, body: bytes) -> UpstreamAnswer:
    return UpstreamAnswer(status=status, content_type="application/json", body=body)


@pytest.mark.parametrize(
    ("config", "status", "body", "outcome"),
    [
        pytest.param(
            PDL, 200, b'{"status": 200, "likelihood": 10, "data": {}}', "found", id="pdl-found"
        ),
        pytest.param(PDL, 404, PDL_404, "missing", id="pdl-not-found"),
        pytest.param(PDL, 429, PDL_429, "throttled", id="pdl-rate-limit"),
        pytest.param(PDL, 202, b"", "pending", id="queued"),
        pytest.param(PDL, 500, b"{}", "error", id="server-error"),
        pytest.param(PDL, 200, b"<html>", "error", id="not-json"),
        pytest.param(
            KRED, 200, b'{"data": [{"influence": 773, "outreach": 7}]}', "found", id="kred-found"
        ),
        pytest.param(KRED, 200, b'{"data": []}', "missing", id="kred-empty-data"),
    ],
)
def test_classification(config: GenericConfig, status: int, body: bytes, outcome: str) -> None:
    adapter = GenericAdapter("api", config)
    match = adapter.match("GET", "/v5/person/enrich", [("profile", "x"), ("term", "x")])
    assert match is not None
    assert adapter.classify(match, ans(status, body)).outcome == outcome


def test_subject_in_a_path_segment_becomes_a_template() -> None:
    adapter = GenericAdapter("api", msgspec.structs.replace(PDL, subject="path:2"))
    match = adapter.match("GET", "/v1/people/jane@example.com/score", [])
    assert match is not None
    assert match.template == "/v1/people/{subject}/score"
    assert match.subjects[0].identifier == "jane@example.com"


def test_comma_lists_give_one_subject_each_and_can_drop_some() -> None:
    adapter = GenericAdapter("kred", KRED)
    match = adapter.match("GET", "/kredscore", [("term", "pepsi,ebay"), ("source", "twitter")])
    assert match is not None
    assert len(match.subjects) == 2
    kept = adapter.without_subjects(
        match, "/kredscore", [("term", "pepsi,ebay")], {match.subjects[0]}
    )
    assert kept == ("/kredscore", [("term", "ebay")])


@pytest.mark.parametrize("value", ["a\r\nb", "a b", "a%0d", "x" * 300, ""])
def test_identifiers_outside_the_charset_are_refused(value: str) -> None:
    with pytest.raises(InvalidSubject):
        GenericAdapter("api", PDL).match("GET", "/v5/person/enrich", [("profile", value)])


def test_neutral_body_carries_the_neutral_score() -> None:
    adapter = GenericAdapter("api", PDL)
    match = adapter.match("GET", "/v5/person/enrich", [("profile", "x")])
    assert match is not None
    neutral = adapter.neutral_answer(match, None, set(match.subjects), 5.0)
    assert msgspec.json.decode(neutral.body) == {"status": 200, "likelihood": 5.0, "data": {}}
