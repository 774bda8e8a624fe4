"""Admin API: credentials, policy status/validate/explain, export, subject access."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from gateway.audit.log import AuditLog
from gateway.audit.lookup_csv import iter_csv_chunks, write_csv
from gateway.audit.lookups import iter_store_records
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_export
from tests.audit.support import fill
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


def test_subject_access_lists_every_lookup_about_one_person(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """Asked by screen name, subject access finds the lookups under every identifier
    linked to that person: here also the HR lookup of her kloutId (denied)."""
    client.get("/klout/v2/identity.json/twitter", params={**CRM, "screenName": "Alice_Example"})
    identity, pseudonyms = gateway.state.identity, gateway.state.pseudonyms
    assert identity is not None
    assert pseudonyms is not None
    name = pseudonyms.pseudonym("twitter_screen_name", "alice_example")
    deadline = time.monotonic() + 5
    while len(identity.store.members_of(name)) < 2:  # the link is stored
        assert time.monotonic() < deadline
        time.sleep(0.02)
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
    assert len(finals) == 3
    # A format-2 outcome refers to its intent by request id; the intent names the client.
    intents = {rec["request_id"]: rec for rec in records if rec["kind"] == "lookup.intent"}
    clients = {intents.get(rec["request_id"], rec).get("client") for rec in finals}
    assert clients == {"crm", "ats"}
    assert b"alice" not in r.content.lower().replace(b'"subject":', b"")


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("X-Request-Id-Internal", id="internal-header"),
        pytest.param("X-Request-Id", id="public-header"),
    ],
)
def test_admin_errors_carry_the_gateways_request_id_not_a_callers(
    client: httpx.Client, header: str
) -> None:
    r = client.get("/admin/policy", headers={header: "forged-0000"})
    assert r.status_code == 401
    assert "forged" not in r.text
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert "forged" not in r.headers["x-request-id"]


def _admin_records(client: httpx.Client) -> list[dict[str, object]]:
    export = client.get("/admin/audit/export", headers=ADMIN)
    lines = [json.loads(line) for line in export.content.splitlines()]
    return [
        line["record"]
        for line in lines
        if line["type"] == "record" and str(line["record"]["kind"]).startswith("admin.")
    ]


def test_every_admin_act_is_on_the_record_under_the_token_id(client: httpx.Client) -> None:
    """Subject access, export, validate and explain each leave an admin.<act> record
    naming the token's id and role and the gateway's request id; the subject of an
    access request appears only as commitments, never as the identifier or its
    pseudonym."""
    acts = {
        "subject_access": client.get(
            "/admin/audit/subject",
            headers=ADMIN,
            params={"upstream": "klout", "subject": "alice_example"},
        ),
        "validate": client.post(
            "/admin/policy/validate", headers=ADMIN, content=SHIPPED_POLICY.read_bytes()
        ),
        "explain": client.post(
            "/admin/policy/explain",
            headers=ADMIN,
            json={"client": "ats", "upstream": "klout", "path": "/v2/user.json/5001/score"},
        ),
        "export": client.get("/admin/audit/export", headers=ADMIN),
    }
    records = {r["request_id"]: r for r in _admin_records(client)}
    for act, answer in acts.items():
        assert answer.status_code == 200, (act, answer.text)
        record = records[answer.headers["x-request-id"]]
        assert record["kind"] == f"admin.{act}"
        assert (record["actor"], record["role"], record["status"]) == (
            "demo-admin",
            "operator",
            200,
        )
    access = records[acts["subject_access"].headers["x-request-id"]]
    assert access["people"], "the subject of an access request is named, as commitments"
    text = json.dumps(access)
    assert "alice" not in text
    assert "hmac-sha256" not in text
    explain = records[acts["explain"].headers["x-request-id"]]
    assert (
        explain["detail"]
        == "ats at klout /v2/user.json/{kloutId}/score for employment.recruitment: deny"
    )


@pytest.mark.parametrize(
    ("request_args", "status", "code"),
    [
        pytest.param(
            ("GET", "/admin/audit/export?untill=2026-01-01T00:00:00Z"),
            400,
            "request.unknown_parameter",
            id="export-misspelled-parameter",
        ),
        pytest.param(
            ("POST", "/admin/policy/explain"), 400, "request.invalid_json", id="explain-no-body"
        ),
    ],
)
def test_refused_admin_acts_are_on_the_record_too(
    client: httpx.Client, request_args: tuple[str, str], status: int, code: str
) -> None:
    method, path = request_args
    r = client.request(method, path, headers=ADMIN)
    assert r.status_code == status
    [record] = [x for x in _admin_records(client) if x["request_id"] == r.headers["x-request-id"]]
    assert (record["status"], record["detail"], record["actor"]) == (status, code, "demo-admin")


def test_a_wrong_admin_token_is_a_strangers_refusal_on_the_record(client: httpx.Client) -> None:
    """No valid token: no actor to name, so the attempt is counted with the other
    refusals of its source; its request id is in an aggregate of the export."""
    r = client.get("/admin/audit/export", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    export = client.get("/admin/audit/export", headers=ADMIN)
    aggregates = [
        line["record"]
        for line in map(json.loads, export.content.splitlines())
        if line["type"] == "record" and line["record"]["kind"] == "refusal.aggregate"
    ]
    [held] = [a for a in aggregates if r.headers["x-request-id"] in a["request_ids"]]
    assert (held["error"], held["status"]) == ("admin.unauthenticated", 401)


def test_the_csv_export_streams_in_chunks_with_the_same_rows(tmp_path: Path) -> None:
    """The CSV an export streams, a chunk at a time, is byte for byte what write_csv
    writes in one piece: constant memory, whatever the size of the log."""
    store = AuditStore.open(data_dir=tmp_path)

    async def populate() -> None:
        log = AuditLog(store, KeyRing.load_or_create(tmp_path))
        await log.start()
        await fill(log, 2_000)
        await log.close()

    asyncio.run(populate())
    whole = io.StringIO()
    write_csv(iter_store_records(store), whole)
    chunks = list(iter_csv_chunks(iter_store_records(store), chunk_size=16 * 1024))
    store.close()
    assert len(chunks) > 3
    assert max(len(c) for c in chunks) < 2 * 16 * 1024
    assert b"".join(chunks) == whole.getvalue().encode()


@pytest.mark.parametrize(
    "host_lines",
    [
        pytest.param("", id="no-host"),
        pytest.param("Host: a\r\nHost: b\r\n", id="two-hosts"),
    ],
)
def test_an_admin_request_with_a_bad_host_is_refused_on_the_record(
    gateway: RunningGateway, client: httpx.Client, host_lines: str
) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET /admin/policy HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    request_id = json.loads(body)["request_id"]
    export = client.get("/admin/audit/export", headers=ADMIN)
    held = [
        line["record"]
        for line in map(json.loads, export.content.splitlines())
        if line["type"] == "record"
        and line["record"]["kind"] == "refusal.aggregate"
        and request_id in line["record"]["request_ids"]
    ]
    assert len(held) == 1
