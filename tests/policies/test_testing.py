"""Tests for gateway/policies/testing.py: the shipped cases pass and cover every rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policies.compile import CompiledPolicy, load_policy
from gateway.policies.testing import route_template, run_cases, uncovered
from tests.policies.samples import SHIPPED, SHIPPED_CASES


@pytest.fixture(scope="module")
def shipped() -> CompiledPolicy:
    return load_policy(SHIPPED)


def test_shipped_cases_pass(shipped: CompiledPolicy) -> None:
    """Every case in policy-tests/ passes against the shipped policy."""
    results = run_cases(shipped, SHIPPED_CASES)
    assert results
    failures = [r.render() for r in results if not r.passed]
    assert not failures, "\n".join(failures)


def test_shipped_cases_cover_every_rule_and_action(shipped: CompiledPolicy) -> None:
    """Each shipped rule (vendor-terms rules too) and each action is exercised by a case."""
    results = run_cases(shipped, SHIPPED_CASES)
    assert uncovered(shipped, results) == []
    actions = {m.action for r in results if r.decision is not None for m in r.decision.matched}
    assert actions == {"deny", "neutralize", "redact", "coarsen", "limit"}


def test_failing_case_names_its_file_and_line(shipped: CompiledPolicy, tmp_path: Path) -> None:
    """A failing case says where it is and what differed."""
    (tmp_path / "wrong.yaml").write_text(
        "cases:\n"
        "  - name: wrongly expects hiring to be allowed\n"
        "    request: {client: ats, upstream: klout, route: /1/klout.json}\n"
        "    expect: {decision: allow, rules: [limit-klout-terms]}\n"
    )
    (result,) = run_cases(shipped, tmp_path)
    assert not result.passed
    assert result.line == 2
    rendered = result.render()
    assert rendered.startswith(f"{tmp_path / 'wrong.yaml'}:2: FAIL: wrongly expects")
    assert "expected allow, got deny" in rendered
    assert "did not match" not in rendered
    assert "also matched deny-employment, deny-hr-clients" in rendered


def test_invalid_case_file_is_reported_at_its_line(shipped: CompiledPolicy, tmp_path: Path) -> None:
    """A mistake in a case file is a failure with file:line:col, not a crash."""
    (tmp_path / "bad.yaml").write_text(
        "cases:\n  - name: x\n    request: {client: crm, upstream: klout, route: /}\n"
        "    expect: {decison: allow}\n"
    )
    results = run_cases(shipped, tmp_path)
    messages = [f for r in results for f in r.failures]
    assert any(
        ":4:14: unknown field 'decison'" in m and "did you mean 'decision'" in m for m in messages
    ), messages


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v2/user.json/5001/score", "/v2/user.json/{kloutId}/score"),
        ("/v2/identity.json/tw/1001", "/v2/identity.json/tw/{id}"),
        ("/1/klout.json?users=alice_example", "/1/klout.json"),
        ("/not/a/klout/route", "/not/a/klout/route"),
    ],
)
def test_route_template_from_path(shipped: CompiledPolicy, path: str, template: str) -> None:
    """A concrete path maps to the adapter's route template, or stays as it is."""
    assert route_template(shipped, "klout", path) == template
