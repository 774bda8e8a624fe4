"""Redaction by meaning: a rule names ``score_trend``, the adapter finds every place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import SHIPPED_POLICY, running_gateway
from tests.support.people import FAST_VENDOR, NO_RATE_LIMIT, policy_with_objections

TREND_FIELDS = ("slope", "delta_1day", "delta_5day", "scoreDelta", "scoreDeltas", "dayChange")
TARGETS = [
    "/klout/1/users/show.json?users=alice_example,nobody_example",
    "/klout/v2/user.json/5001",
    "/klout/v2/user.json/5001/score",
    "/klout/v2/user.json/5001/influence",
    "/klout/v2/user.json/5999/score",  # neutral answers are redacted alike
]


def _add_client(policy: Path, data_dir: Path, name: str, kind: str, purpose: str) -> str:
    """``gateway clients add NAME --kind KIND``, as an operator runs it; the new key."""
    command = ["clients", "add", name, "--kind", kind, "--purpose", purpose]
    command += [
        "--default-purpose",
        purpose,
        "--policies",
        str(policy),
        "--data-dir",
        str(data_dir),
    ]
    out = subprocess.run(
        [sys.executable, "-m", "gateway", *command],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("kind", "purpose", "trend"),
    [
        pytest.param("crm", "sales", False, id="new-crm-gets-no-trend"),
        pytest.param("support", "essential.service.operations.support", False, id="new-support"),
        pytest.param(
            "marketing", "marketing.communications.email", True, id="marketing-keeps-trend"
        ),
    ],
)
def test_rules_by_client_kind_redact_the_trend_everywhere_it_appears(
    tmp_path: Path, kind: str, purpose: str, trend: bool
) -> None:
    """A client added later with ``gateway clients add billing --kind crm`` is covered by
    the shipped rule on kinds; no route shows it a trend, nested people included."""
    data_dir = tmp_path / "var"
    policy = policy_with_objections(tmp_path / "policies.yaml", data_dir, [], replace=NO_RATE_LIMIT)
    key = _add_client(policy, data_dir, "billing", kind, purpose)
    with (
        running_gateway(data_dir, policies=policy, upstream_config=FAST_VENDOR) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c,
    ):
        for target in TARGETS:
            r = c.get(target)
            assert r.status_code == 200, r.text
            shown = [field for field in TREND_FIELDS if f'"{field}"' in r.text]
            assert bool(shown) == trend, (target, shown)


def test_the_shipped_policy_names_kinds_not_client_ids() -> None:
    text = SHIPPED_POLICY.read_text()
    rule = text[text.index("- id: redact-score-trends") :]
    assert "client_kind: [crm, support]" in rule.split("- id:")[1]
    assert "fields: [score_trend]" in rule
