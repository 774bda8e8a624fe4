"""The generic adapter on batches, end to end, in front of a fake of Kred's documented shapes.

Kred (reference: developer.peoplebrowsr.com/kred/kredscore) answers
``GET /kredscore?term=a,b&source=twitter&app_id=..&app_key=..`` with
``{"data": [{"influence": 773, "name": "PeopleBrowsr", "outreach": 7}], "id": "...",
"request": {...}}``: integers, one entry per known name, unknown names left out
(``"data": []`` when none is known). The gateway must answer every person asked, in
order, a neutral entry in the real entry's shape for the missing ones.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import msgspec
import pytest

from gateway.app import create_app
from gateway.settings import Limits, Settings
from tests.support.gateway import SHIPPED_POLICY, copy_shipped_policy
from tests.support.servers import serve_asgi

KRED_KEY = "0123456789abcdef0123456789abcdef"
CRM = {"Authorization": "Bearer demo-crm-key"}
# Kred echoes a name in its own case ("PeopleBrowsr" for term=peoplebrowsr).
KNOWN = {"alice_example": ("Alice_Example", 812, 9), "bob_example": ("Bob_Example", 377, 4)}

KRED_UPSTREAM = """
  - name: kred
    adapter: generic
    description: Kred (PeopleBrowsr), configured without a dedicated adapter.
    base_url: http://api.kred.com
    credential:
      env: GATEWAY_TEST_KRED_KEY
      query_param: app_key
    neutral:
      score: 500
    generic:
      subject: query:term
      subject_separator: ","
      query_params: [source]
      score_path: data.0.influence
      missing_path: data
      score_type: integer
      people:
        list: data
        identifier: name
        neutral_entry: '{"influence": {score}, "name": {subject}, "outreach": 0}'
      neutral_body: '{"data": [], "id": "999-00000000000000000000000000000000", "request": {"term": {subject}}}'
"""


class FakeKred:
    """Kred's kredscore route: integers, known names only, the query echoed."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = dict(parse_qsl(scope["query_string"].decode()))
        self.received.append(scope["query_string"].decode())
        doc: dict[str, object]
        if query.get("app_key") != KRED_KEY:
            status, doc = 401, {"error": "bad app_key"}
        else:
            data = []
            for term in query.get("term", "").split(","):
                if term in KNOWN:
                    name, influence, outreach = KNOWN[term]
                    data.append({"influence": influence, "name": name, "outreach": outreach})
            echo = {k: v for k, v in query.items() if k != "app_key"}
            status, doc = 200, {"data": data, "id": f"999-{secrets.token_hex(16)}", "request": echo}
        body = msgspec.json.encode(doc)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def kred_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FakeKred]]:
    monkeypatch.setenv("GATEWAY_TEST_KRED_KEY", KRED_KEY)
    text = SHIPPED_POLICY.read_text()
    marker = "\n# -----------------------------------------------------------------------------\n# Objections"
    assert marker in text
    policy = copy_shipped_policy(tmp_path, text.replace(marker, KRED_UPSTREAM + marker, 1))
    fake = FakeKred()
    with serve_asgi(fake) as kred_url:
        settings = Settings(
            demo=True,
            data_dir=tmp_path / "var",
            policies=policy,
            upstream_overrides={"kred": kred_url, "klout": "http://127.0.0.1:9"},
            limits=Limits(local_answer_delay=0.005),
        )
        with serve_asgi(create_app(settings)) as url:
            yield url, fake


def _shape(doc: Any) -> Any:
    if isinstance(doc, dict):
        return [(k, _shape(v)) for k, v in doc.items()]
    if isinstance(doc, list):
        return [_shape(v) for v in doc]
    return type(doc).__name__


def test_a_batch_keeps_a_neutral_entry_for_the_missing_person_in_place(
    kred_gateway: tuple[str, FakeKred],
) -> None:
    """``term=alice_example,nobody_example``: nobody is not dropped; his entry sits
    where he was asked, with the real entry's fields, order and integer types."""
    url, _fake = kred_gateway
    r = httpx.get(
        url + "/kred/kredscore",
        params={"term": "alice_example,nobody_example", "source": "twitter"},
        headers=CRM,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["data"] == [
        {"influence": 812, "name": "Alice_Example", "outreach": 9},
        {"influence": 500, "name": "nobody_example", "outreach": 0},
    ]
    assert list(doc) == ["data", "id", "request"]  # the vendor's own frame
    assert _shape(doc["data"][0]) == _shape(doc["data"][1])


@pytest.mark.parametrize(
    "term",
    [
        pytest.param("nobody_example", id="single"),
        pytest.param("nobody_example,carol_x", id="all-missing"),
    ],
)
def test_a_missing_answer_has_the_real_answers_shape_and_types(
    kred_gateway: tuple[str, FakeKred], term: str
) -> None:
    """Not ``{"data":[{"influence":500.0,"outreach":0}]}``: every real field, integers."""
    url, _fake = kred_gateway
    real = httpx.get(url + "/kred/kredscore", params={"term": "bob_example"}, headers=CRM)
    neutral = httpx.get(url + "/kred/kredscore", params={"term": term}, headers=CRM)
    assert neutral.status_code == real.status_code == 200
    neutral_doc, real_doc = neutral.json(), real.json()
    for entry in neutral_doc["data"]:  # every entry: the real entry's fields and types
        assert _shape(entry) == _shape(real_doc["data"][0])
    assert [k for k, _ in _shape(neutral.json())] == [k for k, _ in _shape(real.json())]
    names = [e["name"] for e in neutral_doc["data"]]
    assert names == term.split(",")


def test_undeclared_parameters_never_reach_kred(kred_gateway: tuple[str, FakeKred]) -> None:
    url, fake = kred_gateway
    r = httpx.get(
        url + "/kred/kredscore",
        params={"term": "alice_example", "app_id": "deadbeef"},
        headers=CRM,
    )
    assert r.status_code == 400
    assert r.json()["code"] == "request.unknown_parameter"
    assert not any("deadbeef" in q for q in fake.received)
