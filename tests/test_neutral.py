"""Missing means neutral: opted-out, never-existed and objected people look alike."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.audit.pseudonym import Pseudonymizer
from gateway.demo.upstream import DemoUpstreamConfig
from tests.support.gateway import SHIPPED_POLICY, RunningGateway, running_gateway

CRM = {"key": "demo-crm-key"}
VOLATILE = {"date", "x-request-id"}  # differ per request, never per person


def _wire(r: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in r.headers.items() if k not in VOLATILE)
    return r.status_code, headers, r.content


def _v2_score_flow(
    client: httpx.Client, twitter_id: str
) -> tuple[str, httpx.Response, httpx.Response]:
    identity = client.get(f"/klout/v2/identity.json/tw/{twitter_id}", params=CRM)
    assert identity.status_code == 200
    klout_id = identity.json()["id"]
    score = client.get(f"/klout/v2/user.json/{klout_id}/score", params=CRM)
    user = client.get(f"/klout/v2/user.json/{klout_id}", params=CRM)
    return klout_id, score, user


def test_v2_flow_gives_opted_out_and_never_existed_the_same_neutral_answers(
    client: httpx.Client,
) -> None:
    alice_id, _, _ = _v2_score_flow(client, "1001")  # a real kloutId teaches their shape
    carol_id, carol_score, carol_user = _v2_score_flow(client, "1003")
    nobody_id, nobody_score, nobody_user = _v2_score_flow(client, "1999")
    assert carol_id != nobody_id
    assert len(carol_id) == len(nobody_id) == len(alice_id)
    assert _wire(carol_score) == _wire(nobody_score)
    assert carol_score.json()["score"] == 40.0
    assert _wire(carol_user)[:2] == _wire(nobody_user)[:2]
    assert carol_user.content.replace(carol_id.encode(), b"ID") == nobody_user.content.replace(
        nobody_id.encode(), b"ID"
    )


@pytest.mark.parametrize("missing_status", [200, 404], ids=["no-users-200", "no-users-404"])
def test_v1_answers_for_opted_out_and_never_existed_differ_only_by_the_name_asked(
    tmp_path: Path, missing_status: int
) -> None:
    config = DemoUpstreamConfig(v1_missing_status=missing_status)  # type: ignore[arg-type]
    with (
        running_gateway(tmp_path, upstream_config=config) as gw,
        httpx.Client(base_url=gw.url) as c,
    ):
        for route in ["/1/klout.json", "/1/users/show.json", "/1/users/topics.json"]:
            carol = c.get(f"/klout{route}", params={**CRM, "users": "carol_optedout"})
            nobody = c.get(f"/klout{route}", params={**CRM, "users": "nobody_example"})
            assert carol.status_code == nobody.status_code == 200
            carol_body = carol.content.replace(b"carol_optedout", b"NAME")
            nobody_body = nobody.content.replace(b"nobody_example", b"NAME")
            if route == "/1/users/show.json":
                # Each person gets stable per-person values (a pseudo twitter_id, a
                # class, a reach, a trend centred on zero): same fields, same types.
                assert _shape(carol.json()) == _shape(nobody.json())
                assert carol.json()["users"][0]["score"]["kscore"] == 40.0
                continue
            assert carol_body == nobody_body
            assert _wire(carol)[:2] == _wire(nobody)[:2]  # same-length names: same headers


def _shape(doc: object) -> object:
    """Field names in order and JSON types, without the values."""
    if isinstance(doc, dict):
        return [(k, _shape(v)) for k, v in doc.items()]
    if isinstance(doc, list):
        return [_shape(v) for v in doc]
    return type(doc).__name__


def test_neutral_score_is_not_below_a_real_low_scorer(client: httpx.Client) -> None:
    bob = client.get("/klout/1/klout.json", params={**CRM, "users": "bob_example"}).json()
    nobody = client.get("/klout/1/klout.json", params={**CRM, "users": "nobody_example"}).json()
    assert nobody["users"][0]["kscore"] >= bob["users"][0]["kscore"]


def test_partial_v1_answer_fills_in_the_missing_person(client: httpx.Client) -> None:
    r = client.get("/klout/1/klout.json", params={**CRM, "users": "alice_example,carol_optedout"})
    assert r.json()["users"] == [
        {"twitter_screen_name": "alice_example", "kscore": 71.3},
        {"twitter_screen_name": "carol_optedout", "kscore": 40.0},
    ]


def test_queued_person_is_neutral_not_pending(client: httpx.Client) -> None:
    """A 202 "queued" answer is a missing score too; it must not rank the person last."""
    _id, score, _user = _v2_score_flow(client, "1004")
    assert score.status_code == 200
    assert score.json()["score"] == 40.0


def _policy_with_objection(tmp_path: Path, data_dir: Path, namespace: str, identifier: str) -> Path:
    pseudonym = Pseudonymizer.load_or_create(data_dir).pseudonym(namespace, identifier)
    text = SHIPPED_POLICY.read_text()
    assert "\nobjections: []" in text
    policy = tmp_path / "policies.yaml"
    policy.write_text(text.replace("\nobjections: []", f"\nobjections:\n  - {pseudonym}"))
    return policy


def test_objected_person_is_answered_without_asking_the_upstream(tmp_path: Path) -> None:
    """Carol objected (GDPR Art. 21): her identifier never leaves the company, and
    her answer is byte-identical to the one she gets as an opted-out person."""
    data_dir = tmp_path / "var"
    policy = _policy_with_objection(tmp_path, data_dir, "twitter_id", "1003")
    with running_gateway(tmp_path / "plain") as plain, httpx.Client(base_url=plain.url) as c:
        _, opted_out_score, _ = _v2_score_flow(c, "1003")
        opted_out_identity = c.get("/klout/v2/identity.json/tw/1003", params=CRM)
    with running_gateway(data_dir, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        objected_identity = c.get("/klout/v2/identity.json/tw/1003", params=CRM)
        klout_id = objected_identity.json()["id"]
        objected_score = c.get(f"/klout/v2/user.json/{klout_id}/score", params=CRM)
        assert not any(r.mentions("1003") for r in gw.upstream.received)
        assert not any(r.mentions(klout_id) for r in gw.upstream.received)
    assert _wire(objected_score) == _wire(opted_out_score)
    assert _wire(objected_identity)[:2] == _wire(opted_out_identity)[:2]


def test_objected_person_in_a_v1_list_is_removed_before_the_upstream_call(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    policy = _policy_with_objection(tmp_path, data_dir, "twitter_screen_name", "carol_optedout")
    with running_gateway(data_dir, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        r = c.get("/klout/1/klout.json", params={**CRM, "users": "alice_example,carol_optedout"})
        assert r.json()["users"][1] == {"twitter_screen_name": "carol_optedout", "kscore": 40.0}
        assert gw.upstream.received[-1].query_string.startswith("users=alice_example&")
        assert not any(req.mentions("carol") for req in gw.upstream.received)


def test_gateway_issued_ids_are_answered_locally(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    klout_id = client.get("/klout/v2/identity.json/tw/1999", params=CRM).json()["id"]
    before = len(gateway.upstream.received)
    for suffix in ["", "/score", "/topics", "/influence"]:
        assert client.get(f"/klout/v2/user.json/{klout_id}{suffix}", params=CRM).status_code == 200
    assert len(gateway.upstream.received) == before


def test_answers_for_issued_ids_are_audited_as_missing_not_objected(client: httpx.Client) -> None:
    """Nobody never existed; the score step for the id the gateway issued is recorded
    with the outcome 'missing', so no one appears to have objected who did not."""
    klout_id = client.get("/klout/v2/identity.json/tw/1999", params=CRM).json()["id"]
    score = client.get(f"/klout/v2/user.json/{klout_id}/score", params=CRM)
    export = client.get("/admin/audit/export", headers={"Authorization": "Bearer demo-admin-token"})
    line = next(
        line
        for line in export.content.splitlines()
        if score.headers["x-request-id"].encode() in line
    )
    assert b'"outcome":"missing"' in line
    assert b'"decision":"neutralize"' in line
