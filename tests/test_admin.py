"""Admin API: credentials, policy status/validate/explain, export, subject access."""

from __future__ import annotations

import httpx
import pytest

from gateway.audit.verify import verify_export
from tests.support.gateway import SHIPPED_POLICY, RunningGateway

ADMIN = {"Authorization": "Bearer demo-admin-token"}
CRM = {"key": "demo-crm-key"}


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        pytest.param({}, 401, "admin.unauthenticated", id="no-credentials"),
        pytest.param(
            {"Authorization": "Bearer nope"}, 401, "admin.unauthenticated", id="bad-token"
        ),
        pytest.param(
            {"Authorization": "Basic YWRtaW46YWRtaW4="}, 401, "admin.unauthenticated", id="basic"
        ),
        pytest.param(
            {"Authorization": "Bearer demo-crm-key"}, 403, "admin.forbidden", id="client-key"
        ),
    ],
)
@pytest.mark.parametrize(
    "path", ["/admin/policy", "/admin/audit/export", "/admin/audit/public-key", "/metrics"]
)
def test_admin_routes_need_an_admin_token(
    client: httpx.Client, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    r = client.get(path, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code


def test_policy_status_names_the_active_version(client: httpx.Client) -> None:
    status = client.get("/admin/policy", headers=ADMIN).json()
    ready = client.get("/readyz").json()
    assert status["version"] == ready["policy_version"]
    assert status["version"].startswith("sha256:")
    assert status.get("pending_error") is None


def test_validate_reports_every_problem_with_line_and_column(client: httpx.Client) -> None:
    good = client.post("/admin/policy/validate", headers=ADMIN, content=SHIPPED_POLICY.read_bytes())
    assert good.json()["valid"] is True
    broken = SHIPPED_POLICY.read_text().replace(
        "  - id: deny-employment", "  - idd: deny-employment"
    )
    bad = client.post("/admin/policy/validate", headers=ADMIN, content=broken.encode()).json()
    assert bad["valid"] is False
    assert any("idd" in p["message"] and p["line"] > 1 for p in bad["problems"])


def test_explain_names_the_rule_that_denies_the_hr_client(client: httpx.Client) -> None:
    r = client.post(
        "/admin/policy/explain",
        headers=ADMIN,
        json={"client": "ats", "upstream": "klout", "path": "/v2/user.json/5001/score"},
    )
    body = r.json()
    assert body["decision"] == "deny"
    assert body["route"] == "/v2/user.json/{kloutId}/score"
    assert "deny-hr-clients" in [m["id"] for m in body["matched"]]


def test_export_holds_a_record_for_every_answer_and_no_raw_identifier(
    gateway: RunningGateway, client: httpx.Client, tmp_path: object
) -> None:
    """After allowed, denied, neutralized and failed lookups, every X-Request-Id a
    caller received is in the export, the export verifies, and no raw identifier of
    anyone looked up appears in it."""
    request_ids = []
    calls = [
        ("/klout/v2/identity.json/twitter", {**CRM, "screenName": "alice_example"}),
        ("/klout/v2/user.json/5001/score", CRM),
        ("/klout/v2/identity.json/tw/1003", CRM),
        ("/klout/1/klout.json", {**CRM, "users": "nobody_example,bob_example"}),
        ("/klout/v2/user.json/5001/score", {"key": "demo-hr-key"}),
        ("/klout/v2/identity.json/tw/1999", {"key": "demo-support-key"}),
        ("/klout/v2/user.json/5001/score", {"key": "not-a-key"}),
        ("/klout/v2/user.json/50a1/score", CRM),
        ("/nowhere/v2/user.json/5001", CRM),
    ]
    for path, params in calls:
        r = client.get(path, params=params)
        assert r.status_code in (200, 400, 401, 403, 404)
        request_ids.append(r.headers["x-request-id"])
    export = client.get("/admin/audit/export", headers=ADMIN)
    assert export.status_code == 200
    for request_id in request_ids:
        assert request_id.encode() in export.content
    for raw in [
        b"alice_example",
        b"nobody_example",
        b"bob_example",
        b'"1003"',
        b'"1999"',
        b'"5001"',
    ]:
        assert raw not in export.content
    keys = client.get("/admin/audit/public-key", headers=ADMIN).json()["pem"].encode()
    result = verify_export([export.content], keys)
    assert result.ok, str(result)


def test_subject_access_lists_every_lookup_about_one_person(client: httpx.Client) -> None:
    client.get("/klout/v2/identity.json/twitter", params={**CRM, "screenName": "Alice_Example"})
    client.get("/klout/1/klout.json", params={**CRM, "users": "alice_example"})
    client.get("/klout/v2/user.json/5001/score", params={"key": "demo-hr-key"})
    client.get("/klout/v2/identity.json/twitter", params={**CRM, "screenName": "bob_example"})
    r = client.get(
        "/admin/audit/subject",
        headers=ADMIN,
        params={"upstream": "klout", "subject": "alice_example"},
    )
    records = [e["record"] for e in r.json()["records"]]
    assert all(rec["v"] == 2 for rec in records)
    finals = [rec for rec in records if rec["kind"] == "lookup"]
    assert len(finals) == 2
    # A format-2 outcome refers to its intent by request id; the intent names the client.
    intents = {rec["request_id"]: rec for rec in records if rec["kind"] == "lookup.intent"}
    assert {intents[rec["request_id"]]["client"] for rec in finals} == {"crm"}
    assert b"alice" not in r.content.lower().replace(b'"subject":', b"")
