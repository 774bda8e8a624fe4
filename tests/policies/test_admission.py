"""Tests for gateway/policies/admission.py: one check decides what may go live."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from gateway.cli import main
from gateway.policies.admission import CasesFailed, admit_policy
from gateway.policies.loader import PolicyError
from tests.strategies import hostile_policy_texts
from tests.support.gateway import SHIPPED_POLICY, copy_shipped_policy

SHIPPED_TEXT = SHIPPED_POLICY.read_text()
LOCATED = re.compile(r"^\S+:\d+:\d+: \S")


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=hostile_policy_texts(SHIPPED_TEXT))
def test_any_text_is_admitted_or_refused_with_its_position(text: bytes) -> None:
    """Whatever the text, admission either admits it or raises PolicyError whose every
    line is FILE:LINE:COL: message; nothing else ever escapes."""
    try:
        admit_policy(text, SHIPPED_POLICY)
    except PolicyError as exc:
        lines = exc.lines()
    else:
        return
    assert lines
    assert all(LOCATED.match(line) for line in lines), lines


def test_the_shipped_policy_is_admitted_with_its_cases() -> None:
    """The shipped policy names policy-tests/ and every case there passes."""
    admitted = admit_policy(SHIPPED_POLICY.read_bytes(), SHIPPED_POLICY)
    assert admitted.cases_passed >= 20
    assert not admitted.tests_skipped


def test_failing_cases_are_problems_in_the_case_file(tmp_path: Path) -> None:
    """A failing case is reported at its own file, line and column."""
    path = copy_shipped_policy(tmp_path)
    text = SHIPPED_TEXT.replace("    action: coarsen\n", "    action: redact\n    fields: [x]\n")
    with pytest.raises(CasesFailed) as caught:
        admit_policy(text, path)
    lines = caught.value.lines()
    assert lines
    assert all(line.startswith(f"{tmp_path}/policy-tests/support.yaml:") for line in lines)
    assert all(LOCATED.match(line) for line in lines)


# The same refusals through ``gateway policy check``: it must never say OK for a file a
# running gateway would refuse.
CHECK_REFUSES = [
    pytest.param(SHIPPED_TEXT + "zzz: !foo bar\n", "'!foo' is not allowed", id="unknown-tag"),
    pytest.param(SHIPPED_TEXT + "zzz: !!int abc\n", "!!int", id="int-tag"),
    pytest.param(SHIPPED_TEXT + "zzz: !!float abc\n", "!!float", id="float-tag"),
    pytest.param(SHIPPED_TEXT + "zzz: " + "1" * 100_000 + "\n", "digits", id="huge-integer"),
    pytest.param(
        SHIPPED_TEXT.replace("    action: coarsen\n", "    action: redact\n    fields: [x]\n"),
        "fails with this policy",
        id="failing-case",
    ),
    pytest.param(
        SHIPPED_TEXT.replace("  tests: [policy-tests/]\n", ""),
        "names no test cases",
        id="no-cases-named",
    ),
]


@pytest.mark.parametrize(("text", "message"), CHECK_REFUSES)
def test_policy_check_refuses_what_reload_refuses(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gateway policy check`` exits 1 and prints FILE:LINE:COL for every refusal."""
    path = copy_shipped_policy(tmp_path, text)
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert all(LOCATED.match(line) for line in err.splitlines()[:-1]), err


def test_policy_check_says_how_many_cases_passed(capsys: pytest.CaptureFixture[str]) -> None:
    """A clean check says the policy's own cases ran and passed."""
    assert main(["policy", "check", str(SHIPPED_POLICY)]) == 0
    out = capsys.readouterr().out
    assert re.search(r": OK, version sha256:[0-9a-f]{64}, \d+ rules, \d+ test cases pass", out)
