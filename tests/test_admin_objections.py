"""``/admin/objections``: objections through the admin API, audited, identifiers never echoed."""

from __future__ import annotations

import httpx
import pytest

from tests.support.gateway import RunningGateway

ADMIN = {"Authorization": "Bearer demo-admin-token"}
CRM = {"key": "demo-crm-key"}


def test_add_list_remove_through_the_admin_api(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """The objection holds at once on this replica, the answers name pseudonyms only,
    and the add and the remove are audit records found by the person's subject access."""
    body = {"upstream": "klout", "subjects": ["alice_example", "klout_id:5001"]}
    added = client.post("/admin/objections", json=body, headers=ADMIN)
    assert added.status_code == 201
    assert added.json()["identifiers"] == 2
    score = client.get("/klout/v2/user.json/5001/score", params=CRM)
    assert score.json()["score"] == 40.0
    listed = client.get("/admin/objections", headers=ADMIN).json()["people"]
    assert [p["identifiers"] for p in listed] == [2]
    assert listed[0]["actor"] == "demo-admin"  # the admin token id, never the token
    removed = client.request(
        "DELETE",
        "/admin/objections",
        json={"upstream": "klout", "subjects": ["5001"]},
        headers=ADMIN,
    )
    assert removed.status_code == 200
    assert removed.json()["people"] == 1
    assert client.get("/admin/objections", headers=ADMIN).json() == {"people": []}
    assert client.get("/klout/v2/user.json/5001/score", params=CRM).json()["score"] == 71.3
    for answer in (added, removed):
        assert "alice" not in answer.text
        assert "5001" not in answer.text
    access = client.get(
        "/admin/audit/subject",
        params={"upstream": "klout", "subject": "alice_example"},
        headers=ADMIN,
    ).json()["records"]
    kinds = [r["record"]["kind"] for r in access if r["record"]["kind"].startswith("objection")]
    assert kinds == ["objection.add", "objection.remove"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b'{"upstream":"klout"}', 400, "request.invalid_json", id="no-subjects"),
        pytest.param(
            b'{"upstream":"klout","subjects":[]}', 400, "request.invalid_json", id="empty"
        ),
        pytest.param(
            b'{"upstream":"klout","subjects":["a"],"subjects":["b"]}',
            400,
            "request.duplicate_field",
            id="duplicate-key",
        ),
        pytest.param(
            b'{"upstream":"klout","subjects":["bad name!"]}',
            400,
            "objection.invalid_subject",
            id="not-an-identifier",
        ),
        pytest.param(
            b'{"upstream":"kred","subjects":["alice_example"]}',
            404,
            "upstream.unknown",
            id="unknown-upstream",
        ),
        pytest.param(
            b'{"upstream":"klout","subjects":["x"],"extra":1}',
            400,
            "request.invalid_json",
            id="unknown-field",
        ),
    ],
)
def test_bad_objection_requests_are_refused_without_echoing_them(
    client: httpx.Client, body: bytes, status: int, code: str
) -> None:
    r = client.post(
        "/admin/objections",
        content=body,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert r.status_code == status
    assert r.json()["code"] == code
    assert "bad name" not in r.text


def test_client_keys_do_not_open_objections(client: httpx.Client) -> None:
    r = client.get("/admin/objections", headers={"Authorization": "Bearer demo-crm-key"})
    assert r.status_code == 403
