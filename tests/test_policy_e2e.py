"""The shipped policy, enforced end to end through the real gateway and simulator."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.gateway import SHIPPED_POLICY, RunningGateway, running_gateway

SCORE = "/klout/v2/user.json/5001/score"


@pytest.mark.parametrize(
    "purpose",
    [
        None,
        "employment.recruitment",
        "employment",
        "sales",
        "essential.service.operations.support",
        "Sales",
        "marketing.communications.email",
    ],
)
def test_the_hr_client_is_refused_whatever_purpose_it_declares(
    gateway: RunningGateway, client: httpx.Client, purpose: str | None
) -> None:
    before = len(gateway.upstream.received)
    headers = {"X-Purpose": purpose} if purpose is not None else {}
    r = client.get(SCORE, params={"key": "demo-hr-key"}, headers=headers)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] in ("policy.denied", "purpose.not_registered")
    assert len(gateway.upstream.received) == before


def test_hr_denial_names_its_rule_reason_and_policy_version(client: httpx.Client) -> None:
    body = client.get(SCORE, params={"key": "demo-hr-key"}).json()
    assert body["rule"] in ("deny-employment", "deny-hr-clients")
    assert body["reason"]
    assert body["policy_version"] == client.get("/readyz").json()["policy_version"]


def test_ad_targeting_is_refused_and_email_marketing_is_not(client: httpx.Client) -> None:
    key = {"key": "demo-marketing-key"}
    targeted = client.get(
        SCORE, params=key, headers={"X-Purpose": "marketing.advertising.third_party.targeted"}
    )
    assert targeted.status_code == 403
    assert targeted.json()["code"] == "policy.denied"
    email = client.get(SCORE, params=key, headers={"X-Purpose": "marketing.communications.email"})
    assert email.status_code == 200


def test_two_purpose_headers_are_refused(client: httpx.Client) -> None:
    r = client.get(
        SCORE,
        params={"key": "demo-marketing-key"},
        headers=[("X-Purpose", "marketing.communications.email"), ("X-Purpose", "sales")],
    )
    assert r.status_code == 400
    assert r.json()["code"] == "request.ambiguous_purpose"


def test_crm_gets_alices_real_score(client: httpx.Client) -> None:
    assert client.get(SCORE, params={"key": "demo-crm-key"}).json()["score"] == 71.3


def test_support_desk_sees_only_the_band(client: httpx.Client) -> None:
    body = client.get("/klout/v2/user.json/5001", params={"key": "demo-support-key"}).json()
    assert body["score"] == {"score": 70.0, "bucket": "70-79"}


def test_neutralized_answers_can_be_revealed_when_the_policy_says_so(tmp_path: Path) -> None:
    policy = tmp_path / "policies.yaml"
    text = SHIPPED_POLICY.read_text()
    assert "reveal_neutralized: false" in text
    policy.write_text(text.replace("reveal_neutralized: false", "reveal_neutralized: true"))
    with (
        running_gateway(tmp_path / "var", policies=policy) as gw,
        httpx.Client(base_url=gw.url) as c,
    ):
        neutral = c.get("/klout/v2/identity.json/tw/1999", params={"key": "demo-crm-key"})
        real = c.get("/klout/v2/identity.json/tw/1001", params={"key": "demo-crm-key"})
    assert neutral.headers["x-gateway-neutralized"] == "true"
    assert "x-gateway-neutralized" not in real.headers


def test_by_default_nothing_tells_a_neutral_answer_apart(client: httpx.Client) -> None:
    neutral = client.get("/klout/v2/identity.json/tw/1999", params={"key": "demo-crm-key"})
    real = client.get("/klout/v2/identity.json/tw/1001", params={"key": "demo-crm-key"})
    assert sorted(neutral.headers.keys()) == sorted(real.headers.keys())
