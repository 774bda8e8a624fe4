"""``gateway policy ropa``: the GDPR Art. 30 record of processing from policies.yaml."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policies.compile import load_policy
from gateway.policies.ropa import entries
from tests.support.gateway import SHIPPED_POLICY


def test_every_purpose_has_an_entry_with_what_article_30_asks() -> None:
    """One entry per purpose: clients, status under the real evaluator, recipients,
    data, cache retention; refused purposes cite the rules that refuse them."""
    policy = load_policy(SHIPPED_POLICY)
    by_purpose = {e.purpose: e for e in entries(policy)}
    assert list(by_purpose) == list(policy.policy.purposes)

    sales = by_purpose["sales"]
    assert sales.status == "allowed for crm"
    assert sales.clients == ["crm (crm)"]
    assert sales.recipients == ["klout (Klout, Inc. (fictional contact for this example))"]
    assert sales.countries == ["United States"]
    assert "influence score and score changes" in sales.data_categories
    assert sales.cache_retention == ["klout: at most 7d"]
    assert {r.id for r in sales.rules} >= {"neutralize-missing", "limit-klout-terms"}
    assert "coarsen-support-desk" not in {r.id for r in sales.rules}

    hiring = by_purpose["employment.recruitment"]
    assert hiring.status == "refused by deny-employment"
    assert hiring.recipients == []
    assert [r.id for r in hiring.rules] == ["deny-employment", "deny-hr-clients"]
    assert all(r.source for r in hiring.rules)

    targeted = by_purpose["marketing.advertising.third_party.targeted"]
    assert targeted.status.startswith("refused by")
    assert "terms.klout.banned-purpose" in {r.id for r in targeted.rules}
    assert by_purpose["marketing.communications.bulk"].status == "no client is registered for it"
    assert [r.id for r in by_purpose["marketing.communications.bulk"].rules] == [
        "terms.klout.banned-purpose"
    ]


@pytest.mark.parametrize("fmt", ["md", "html", "csv"])
def test_each_format_names_the_controller_dpo_and_sources(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Markdown, HTML and CSV carry the controller, the DPO, the audit retention, every
    purpose and the sources of the rules."""
    out = tmp_path / f"ropa.{fmt}"
    assert main(["policy", "ropa", str(SHIPPED_POLICY), "--format", fmt, "--out", str(out)]) == 0
    text = out.read_text()
    for needle in ("Example Widgets GmbH", "dpo@example.com", "6 years",
                   "employment.recruitment", "https://www.law.cornell.edu/uscode/text/15/1681b"):  # fmt: skip
        assert needle in text
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["purpose"] for r in rows] == list(load_policy(SHIPPED_POLICY).policy.purposes)
    if fmt == "html":
        assert "<script" not in text
        assert "http" not in text.split("<body>")[0]
    assert "no 'controller' block" not in capsys.readouterr().err


def test_a_policy_without_a_controller_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the controller block the record is still written, marked as incomplete."""
    text = SHIPPED_POLICY.read_text()
    start = text.index("controller:\n")
    end = text.index("\n# ---", start)
    bare = tmp_path / "policies.yaml"
    bare.write_text(text[:start] + text[end + 1 :])
    assert main(["policy", "ropa", str(bare)]) == 0
    captured = capsys.readouterr()
    assert "| Controller | not given in policies.yaml |" in captured.out
    assert "no 'controller' block" in captured.err
