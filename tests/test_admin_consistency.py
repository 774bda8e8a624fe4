"""``GET /admin/audit/consistency``: an RFC 6962 proof between two sizes of the live log."""

from __future__ import annotations

import base64

import httpx
import pytest

from gateway.audit.merkle import verify_consistency

ADMIN = {"Authorization": "Bearer demo-admin-token"}
CRM = {"key": "demo-crm-key"}


def test_the_served_proof_verifies_between_two_checkpoints(client: httpx.Client) -> None:
    """The proof between the log's sizes before and after more lookups verifies against
    the roots of the checkpoints the admin export signed at those sizes."""
    first = client.get("/admin/audit/export", headers=ADMIN).text.splitlines()
    for _ in range(3):
        assert client.get("/klout/v2/user.json/5001/score", params=CRM).status_code == 200
    second = client.get("/admin/audit/export", headers=ADMIN).text.splitlines()
    old = httpx.Response(200, content=first[-1]).json()
    new = httpx.Response(200, content=second[-1]).json()
    r = client.get(
        "/admin/audit/consistency", params={"from": old["size"], "to": new["size"]}, headers=ADMIN
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["from"], body["to"]) == (old["size"], new["size"])
    assert (body["from_root"], body["to_root"]) == (old["root"], new["root"])
    verify_consistency(
        old["size"],
        new["size"],
        base64.b64decode(old["root"]),
        base64.b64decode(new["root"]),
        [base64.b64decode(h) for h in body["proof"]],
    )


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        pytest.param({"from": "3", "to": "2"}, 404, "audit.range_invalid", id="from-after-to"),
        pytest.param(
            {"from": "0", "to": "999999"}, 404, "audit.range_invalid", id="beyond-the-log"
        ),
        pytest.param({"from": "-1", "to": "2"}, 400, "request.invalid", id="negative"),
        pytest.param({"from": "x", "to": "2"}, 400, "request.invalid", id="not-a-number"),
        pytest.param({"to": "2"}, 400, "request.invalid", id="from-missing"),
        pytest.param(
            {"from": "0", "to": "1", "untill": "2"},
            400,
            "request.unknown_parameter",
            id="unknown-parameter",
        ),
    ],
)
def test_bad_ranges_are_problem_json(
    client: httpx.Client, params: dict[str, str], status: int, code: str
) -> None:
    """A malformed request is a 400 and a range with no proof a 404, each a problem with a
    stable code, never a 500."""
    r = client.get("/admin/audit/consistency", params=params, headers=ADMIN)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code


def test_the_proof_needs_an_admin_token(client: httpx.Client) -> None:
    """Client keys and anonymous callers are refused."""
    r = client.get("/admin/audit/consistency", params={"from": 0, "to": 1})
    assert r.status_code == 401
    r = client.get(
        "/admin/audit/consistency",
        params={"from": 0, "to": 1},
        headers={"Authorization": "Bearer demo-crm-key"},
    )
    assert r.status_code == 403
