"""Tests for gateway/policies/loader.py: every mistake reported once, at its line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policies.loader import PolicyError, parse_duration, parse_policy, read_policy
from tests.policies.samples import MINIMAL, SHIPPED


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    return info.value.lines()


def test_shipped_policy_loads() -> None:
    """The shipped policy is valid and every rule has its line."""
    source = read_policy(SHIPPED)
    assert source.version.startswith("sha256:")
    assert set(source.rule_lines) == {rule.id for rule in source.policy.rules}
    text = SHIPPED.read_text().splitlines()
    for rule_id, line in source.rule_lines.items():
        assert f"id: {rule_id}" in text[line - 1]


def test_every_shipped_rule_has_reason_and_link() -> None:
    """Every shipped rule carries a reason and a source with a link."""
    source = read_policy(SHIPPED)
    for rule in source.policy.rules:
        assert rule.reason.strip()
        assert "http" in rule.source, rule.id


def test_misspelled_field_suggests_the_right_one_at_its_position() -> None:
    """A misspelled field names the line and column of the key and suggests a fix."""
    text = MINIMAL.replace("    purposes: [sales]", "    purpsoes: [sales]")
    lines = problems_of(text)
    assert (
        "policies.yaml:8:5: unknown field 'purpsoes' in a client; did you mean 'purposes'? "
        "expected one of: id, kind, purposes, default_purpose, description, key_hash"
    ) in lines


def test_yaml_syntax_error_has_its_position() -> None:
    """A YAML syntax error is reported with the line and column where reading stopped."""
    lines = problems_of("purposes:\n  sales: [unclosed\nclients: []\n")
    assert len(lines) == 1
    assert lines[0].startswith("policies.yaml:3:")
    assert "not valid YAML" in lines[0]


def test_duplicate_keys_are_reported_not_silently_resolved() -> None:
    """Two equal keys in one mapping are an error (PyYAML would keep the last)."""
    text = MINIMAL.replace("    action: deny\n", "    action: deny\n    action: neutralize\n")
    lines = problems_of(text)
    assert lines == [
        "policies.yaml:20:5: the key 'action' is given twice in the same mapping "
        "(first at line 19, column 5); keep only one of them"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "when: {purpose: employment}",
            "when: {purpose: employmnt}",
            "18:21: the purpose 'employmnt' is not listed under 'purposes'; did you mean "
            "'employment'?",
            id="unknown-purpose",
        ),
        pytest.param(
            "when: {purpose: employment}",
            "when: {purpose: employment, client: crn}",
            "18:41: the rule names the client 'crn', which is not listed under 'clients'; "
            "did you mean 'crm'?",
            id="unknown-client",
        ),
        pytest.param(
            "when: {purpose: employment}",
            "when: {upstream: kred}",
            "18:22: the rule names the upstream 'kred', which is not listed",
            id="unknown-upstream",
        ),
        pytest.param(
            "when: {purpose: employment}",
            "when: {purpose: Employment}",
            "18:21: 'Employment' is not a valid purpose name",
            id="uppercase-purpose",
        ),
        pytest.param(
            "    purposes: [sales]\n",
            "    purposes: [sales]\n    default_purpose: employment\n",
            "9:22: the default purpose 'employment' is not among the purposes of 'crm'",
            id="default-purpose-not-registered",
        ),
        pytest.param(
            "    neutral: {score: 40}\n",
            "    neutral: {score: 40}\n    terms: {max_cache_age: 7 days}\n",
            "14:28: '7 days' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            "    action: deny\n",
            "    action: redact\n",
            "19:13: the rule 'deny-employment' redacts, so it needs 'fields'",
            id="redact-without-fields",
        ),
        pytest.param(
            "    action: deny\n",
            "    action: limit\n",
            "19:13: the rule 'deny-employment' limits, so it needs 'limit:'",
            id="limit-without-limit",
        ),
        pytest.param(
            "adapter: klout",
            "adapter: kloutt",
            "11:14: unknown adapter 'kloutt'; did you mean 'klout'?",
            id="unknown-adapter",
        ),
        pytest.param(
            "adapter: klout",
            "adapter: generic",
            "11:14: the upstream 'klout' uses the generic adapter, which needs a 'generic:'",
            id="generic-without-block",
        ),
        pytest.param(
            "    neutral: {score: 40}\n",
            "    neutral: {score: 40}\n    credential: {env: K, query_param: key, header: X}\n",
            "14:17: the credential needs exactly one of 'query_param'",
            id="credential-both-places",
        ),
        pytest.param(
            "    neutral: {score: 40}\n",
            "    neutral: {score: 40}\n    credential: {env: K}\n",
            "14:17: the credential needs exactly one of 'query_param'",
            id="credential-no-place",
        ),
        pytest.param(
            "    action: deny\n",
            "    action: deny\n  - id: deny-employment\n    reason: r\n    source: s\n"
            "    action: deny\n",
            "20:9: the rule id 'deny-employment' is used twice (first at line 15)",
            id="duplicate-rule-id",
        ),
        pytest.param(
            "upstreams:",
            "  - id: crm\n    kind: crm\n    purposes: [sales]\nupstreams:",
            "9:9: the client id 'crm' is used twice (first at line 6)",
            id="duplicate-client-id",
        ),
        pytest.param(
            "    action: deny\n",
            "    action: deny\n    when: {outcome: missing}\n",
            "20:5: the key 'when' is given twice",
            id="duplicate-when",
        ),
        pytest.param(
            "    action: deny\n",
            "    action: ban\n",
            "19:13: 'action' is the text 'ban', but it must be one of: deny, neutralize",
            id="unknown-action",
        ),
        pytest.param(
            "when: {purpose: employment}",
            "when: {purpose: employment, outcome: mising}",
            "did you mean 'missing'?",
            id="misspelled-outcome",
        ),
        pytest.param(
            "  employment: HR.\n",
            "",
            "3:3: the purpose 'employment.recruitment' is listed but its parent 'employment'",
            id="purpose-without-parent",
        ),
        pytest.param(
            "    neutral: {score: 40}\n",
            "",
            "10:5: an upstream is missing the field 'neutral'",
            id="missing-required-field",
        ),
        pytest.param(
            "    reason: No hiring.\n",
            "    reason: 42\n",
            "16:13: 'reason' is the number 42, but it must be text",
            id="number-for-text",
        ),
        pytest.param(
            "  - id: deny-employment\n",
            "  - id: terms.mine\n",
            "15:9: rule ids starting with terms. or policy. are made by the gateway",
            id="reserved-rule-id",
        ),
    ],
)
def test_mistake_is_reported_at_its_position(old: str, new: str, expected: str) -> None:
    """Each kind of mistake is reported with the line:col of the offending value."""
    assert old in MINIMAL
    lines = problems_of(MINIMAL.replace(old, new, 1))
    assert any(expected in line for line in lines), lines


def test_all_problems_are_reported_in_one_pass() -> None:
    """Mistakes in different sections are all reported together, in file order."""
    text = (
        MINIMAL.replace("purposes: [sales]", "purpsoes: [sales]")
        .replace("adapter: klout", "adapter: klot")
        .replace("when: {purpose: employment}", "when: {purpose: employmnt, client: crn}")
        .replace("    action: deny\n", "    action: deny\n    action: deny\n")
    )
    lines = problems_of(text)
    joined = "\n".join(lines)
    for fragment in ("'purpsoes'", "'klot'", "'employmnt'", "'crn'", "given twice"):
        assert fragment in joined
    positions = [tuple(int(n) for n in line.split(":")[1:3]) for line in lines]
    assert positions == sorted(positions)


def test_msgspec_error_path_maps_to_line_and_col() -> None:
    """A msgspec path like ``$.rules[0].when`` is mapped to the line of that value."""
    import msgspec

    from gateway.policies.loader import problem_from_msgspec
    from gateway.policies.yamlsource import read_yaml

    located = read_yaml(MINIMAL)
    try:
        msgspec.convert({"x": 1}, dict[str, str])
    except msgspec.ValidationError as exc:
        error = msgspec.ValidationError(str(exc).replace("$[...]", "$.rules[0].when"))
    problem = problem_from_msgspec(error, located)
    assert (problem.line, problem.col) == (18, 11)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 604800),
        ("24h", 86400),
        ("30m", 1800),
        ("60s", 60),
        ("0d", None),
        ("7 d", None),
        ("7", None),
        ("1w", None),
        ("-1d", None),
    ],
)
def test_parse_duration(text: str, seconds: int | None) -> None:
    """Durations are a whole positive number and one of d, h, m, s."""
    assert parse_duration(text) == seconds


def test_version_ignores_comments_and_formatting() -> None:
    """Comments, spacing and flow style do not change the version; content does."""
    base = parse_policy(MINIMAL).version
    reformatted = "# a comment\n" + MINIMAL.replace(
        "when: {purpose: employment}", "when:\n      purpose: employment   # hiring"
    )
    assert parse_policy(reformatted).version == base
    changed = MINIMAL.replace("source: FCRA", "source: FCRA 1681b")
    assert parse_policy(changed).version != base


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("", "it is an empty file", id="empty"),
        pytest.param("- a\n- b\n", "it is a list", id="list"),
        pytest.param("a: &x [*x]\n", "", id="recursive-alias"),
        pytest.param("base: &b {sales: x}\npurposes:\n  <<: *b\n", "anchors", id="merge-key"),
        pytest.param("purposes: {}\n---\nother: 1\n", "not valid YAML", id="two-documents"),
    ],
)
def test_hostile_or_odd_files_are_errors_not_crashes(text: str, fragment: str) -> None:
    """Odd YAML gives a PolicyError with a message, never another exception."""
    lines = problems_of(text)
    assert any(fragment in line for line in lines)


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    """A file that is not UTF-8 is an error that says so."""
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"purposes: {sales: \xff}\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        read_policy(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A missing file is an error naming the file."""
    with pytest.raises(PolicyError, match="does not exist"):
        read_policy(tmp_path / "nope.yaml")
