"""Tests for gateway/policies/commands.py: check, test, explain, schema exit codes and output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway.policies.commands import register
from tests.policies.samples import MINIMAL, SHIPPED


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gateway")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_check_clean(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file exits 0 and names its version."""
    assert run(["policy", "check", str(SHIPPED)]) == 0
    assert "OK, version sha256:" in capsys.readouterr().out


def test_check_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file exits 1 with one FILE:LINE:COL line per problem on stderr."""
    path = tmp_path / "policies.yaml"
    path.write_text(
        MINIMAL.replace("adapter: klout", "adapter: klot").replace(
            "purposes: [sales]", "purpsoes: [sales]"
        )
    )
    assert run(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:8:5: unknown field 'purpsoes'")
    assert err[1].startswith(f"{path}:11:14: unknown adapter 'klot'")
    assert err[-1] == f"2 problems in {path}; nothing was changed"


def test_test_runs_the_shipped_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """``policy test`` runs the cases the policy names (policy-tests/) and passes."""
    assert run(["policy", "test", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert " passed, 0 failed" in out
    assert "warning" not in out


def test_test_fails_on_a_failing_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A failing case makes ``policy test`` exit 1."""
    (tmp_path / "c.yaml").write_text(
        "cases:\n  - name: n\n    request: {client: ats, upstream: klout, route: /1/klout.json}\n"
        "    expect: {decision: allow}\n"
    )
    assert run(["policy", "test", str(SHIPPED), "--cases", str(tmp_path)]) == 1
    assert "FAIL: n" in capsys.readouterr().out


def test_explain_names_rules_lines_reasons_and_sources(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``explain`` prints the decision and each matched rule with its line and source."""
    code = run(
        [
            "policy",
            "explain",
            str(SHIPPED),
            "--client",
            "ats",
            "--upstream",
            "klout",
            "--path",
            "/v2/user.json/5001/score",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "decision: DENY by deny-employment" in out
    assert "route /v2/user.json/{kloutId}/score" in out
    assert f"deny-hr-clients [deny] ({SHIPPED}:" in out
    assert "source: FCRA 15 U.S.C. § 1681b" in out


def test_explain_outcome_and_route(capsys: pytest.CaptureFixture[str]) -> None:
    """``--route`` and ``--outcome`` are used as given."""
    code = run(
        [
            "policy",
            "explain",
            str(SHIPPED),
            "--client",
            "support-desk",
            "--upstream",
            "klout",
            "--route",
            "/v2/user.json/{kloutId}/score",
            "--outcome",
            "missing",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "decision: NEUTRALIZE" in out
    assert "score shown as its band only" in out


def test_schema_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    """``policy schema`` prints a JSON Schema."""
    assert run(["policy", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"].startswith("Score gateway policy")


def test_policy_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """``gateway policy`` alone shows the usage and exits 2."""
    assert run(["policy"]) == 2
    assert "check" in capsys.readouterr().err
