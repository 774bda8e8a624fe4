"""Tests for gateway/policies/evaluate.py: deny wins, hierarchy, outcomes, spoofing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policies.compile import POLICY_RULES, CompiledPolicy, compile_policy
from gateway.policies.evaluate import evaluate
from gateway.policies.model import LookupContext, Policy, Rule
from tests.policies.samples import MINIMAL, compiled, context
from tests.strategies import SPOOFED_PURPOSES, contexts, policies

RULES = (
    MINIMAL
    + """\
  - id: neutralize-missing
    reason: r
    source: s
    when: {outcome: [missing, pending]}
    action: neutralize
  - id: redact-a
    reason: r
    source: s
    action: redact
    fields: [a, b]
  - id: deny-crm-on-score
    reason: r
    source: s
    when: {client: crm, route: '/v2/user.json/*/score'}
    action: deny
  - id: redact-b
    reason: r
    source: s
    when: {upstream: klout}
    action: redact
    fields: [b, c]
  - id: coarsen-eu
    reason: r
    source: s
    when: {attributes: {jurisdiction: EU}}
    action: coarsen
  - id: limit-klout
    reason: r
    source: s
    when: {upstream: klout}
    action: limit
    limit: {per: upstream, calls_per_second: 10, calls_per_day: 10000}
"""
)


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return compiled(RULES)


def test_allowed_lookup_lists_every_matching_rule_in_file_order(policy: CompiledPolicy) -> None:
    """All matching rules are listed in file order; actions add up."""
    decision = evaluate(context(route="/v2/user.json/{kloutId}"), policy)
    assert decision.allowed
    assert decision.rule_ids == ("redact-a", "redact-b", "limit-klout")
    assert decision.redact == ("a", "b", "c")
    assert [rule_id for rule_id, _ in decision.limits] == ["limit-klout"]
    assert decision.policy_version == policy.version
    assert [m.line for m in decision.matched] == [policy.rule_line(r) for r in decision.rule_ids]


def test_deny_wins_over_everything_else(policy: CompiledPolicy) -> None:
    """A denying rule refuses the lookup even when others neutralize or redact."""
    decision = evaluate(context(outcome="missing"), policy)
    assert not decision.allowed
    assert decision.deny is not None
    assert decision.deny.id == "deny-crm-on-score"
    assert decision.neutralize
    assert "neutralize-missing" in decision.rule_ids


@pytest.mark.parametrize(
    ("purpose", "denied"),
    [
        pytest.param("employment", True, id="the-purpose-itself"),
        pytest.param("employment.recruitment", True, id="a-purpose-under-it"),
        pytest.param("sales", False, id="another-purpose"),
    ],
)
def test_a_rule_on_a_purpose_covers_the_purposes_under_it(purpose: str, denied: bool) -> None:
    """``employment`` covers ``employment.recruitment``."""
    policy = compiled(MINIMAL.replace("purposes: [sales]", "purposes: [sales, employment]"))
    decision = evaluate(context(purpose=purpose), policy)
    assert ("deny-employment" in decision.rule_ids) is denied
    assert decision.allowed is not denied


def test_a_rule_on_a_narrow_purpose_does_not_cover_its_parent() -> None:
    """A rule on ``employment.recruitment`` does not match ``employment``."""
    policy = compiled(
        MINIMAL.replace(
            "when: {purpose: employment}", "when: {purpose: employment.recruitment}"
        ).replace("purposes: [sales]", "purposes: [employment]")
    )
    assert evaluate(context(purpose="employment"), policy).allowed
    assert not evaluate(context(purpose="employment.recruitment"), policy).allowed


@pytest.mark.parametrize("spoofed", [pytest.param(p, id=repr(p)) for p in SPOOFED_PURPOSES])
def test_spoofed_purposes_never_match_and_are_refused(spoofed: str) -> None:
    """A look-alike purpose matches no purpose rule and is refused as unknown."""
    policy = compiled(MINIMAL.replace("purposes: [sales]", "purposes: [sales, employment]"))
    decision = evaluate(context(purpose=spoofed), policy)
    assert not decision.allowed
    assert decision.deny == POLICY_RULES["policy.unknown-purpose"]
    assert "deny-employment" not in decision.rule_ids
    assert not policy.purpose_allowed("crm", spoofed)


@pytest.mark.parametrize(
    ("outcome", "neutralized"),
    [
        pytest.param(None, False, id="before-the-upstream"),
        pytest.param("found", False, id="found"),
        pytest.param("missing", True, id="missing"),
        pytest.param("pending", True, id="pending"),
        pytest.param("objected", False, id="objected-not-listed"),
    ],
)
def test_outcome_rules_match_only_their_outcomes(
    policy: CompiledPolicy, outcome: str | None, neutralized: bool
) -> None:
    """A rule with ``when.outcome`` matches only those outcomes; others match any outcome."""
    decision = evaluate(context(route="/1/klout.json", outcome=outcome), policy)
    assert decision.neutralize is neutralized
    assert ("neutralize-missing" in decision.rule_ids) is neutralized
    # Rules without an outcome condition match before and after the upstream alike.
    assert "limit-klout" in decision.rule_ids


@pytest.mark.parametrize(
    ("route", "denied"),
    [
        pytest.param("/v2/user.json/{kloutId}/score", True, id="template"),
        pytest.param("/v2/user.json/5001/score", True, id="concrete-path"),
        pytest.param("/v2/user.json/{kloutId}", False, id="other-template"),
        pytest.param("/v2/user.json/a/b/score", False, id="star-is-one-segment"),
        pytest.param("/v2/user.json//score", True, id="empty-segment"),
    ],
)
def test_route_globs(policy: CompiledPolicy, route: str, denied: bool) -> None:
    """``*`` in a route pattern stands for exactly one path segment."""
    assert evaluate(context(route=route), policy).allowed is not denied


def test_route_double_star_and_placeholder_names() -> None:
    """``**`` crosses segments; ``{name}`` matches whatever the adapter calls it."""
    text = MINIMAL.replace(
        "when: {purpose: employment}", "when: {route: ['/v1/**', '/v2/user.json/{id}/score']}"
    )
    policy = compiled(text)
    for route in ("/v1/a/b/c", "/v2/user.json/{kloutId}/score", "/v2/user.json/5/score"):
        assert not evaluate(context(route=route), policy).allowed, route
    for route in ("/v2/user.json/{kloutId}", "/v1", "/v3/a"):
        assert evaluate(context(route=route), policy).allowed, route


def test_attribute_conditions(policy: CompiledPolicy) -> None:
    """A rule with attributes matches only when every one is present and equal."""
    base = context(route="/1/klout.json")
    assert not evaluate(base, policy).coarsen
    eu = context(route="/1/klout.json", attributes={"jurisdiction": "EU"})
    assert evaluate(eu, policy).coarsen
    us = context(route="/1/klout.json", attributes={"jurisdiction": "US"})
    assert not evaluate(us, policy).coarsen


@pytest.mark.parametrize(
    ("overrides", "rule_id"),
    [
        pytest.param({"client": "unknown"}, "policy.unknown-client", id="unknown-client"),
        pytest.param({"upstream": "kred"}, "policy.unknown-upstream", id="unknown-upstream"),
        pytest.param({"purpose": "nonsense"}, "policy.unknown-purpose", id="unknown-purpose"),
        pytest.param(
            {"purpose": "employment.recruitment"},
            "policy.purpose-not-registered",
            id="purpose-not-registered",
        ),
    ],
)
def test_what_the_policy_cannot_judge_is_refused_by_a_named_rule(
    overrides: dict[str, str], rule_id: str
) -> None:
    """Unknown clients, upstreams and purposes, and unregistered purposes, are denied."""
    decision = evaluate(context(**overrides), compiled())
    assert not decision.allowed
    assert decision.deny is not None
    assert decision.deny.id == rule_id
    assert decision.rule_ids[0] == rule_id


def test_purpose_allowed_covers_narrower_purposes_only() -> None:
    """A client registered for a purpose may declare narrower ones, never broader."""
    policy = compiled(MINIMAL.replace("purposes: [sales]", "purposes: [employment.recruitment]"))
    assert policy.purpose_allowed("crm", "employment.recruitment")
    assert not policy.purpose_allowed("crm", "employment")
    assert not policy.purpose_allowed("crm", "sales")
    assert not policy.purpose_allowed("nobody", "sales")
    policy = compiled(MINIMAL.replace("purposes: [sales]", "purposes: [employment]"))
    assert policy.purpose_allowed("crm", "employment.recruitment")


def test_vendor_terms_become_a_named_deny_rule() -> None:
    """``terms.banned_purposes`` denies with a rule naming the terms' reason and source."""
    text = MINIMAL.replace(
        "    neutral: {score: 40}\n",
        "    neutral: {score: 40}\n"
        "    terms:\n"
        "      banned_purposes: [employment]\n"
        "      reason: The terms ban it.\n"
        "      source: http://example.invalid/terms\n",
    )
    policy = compiled(text.replace("purposes: [sales]", "purposes: [employment]"))
    decision = evaluate(context(purpose="employment.recruitment"), policy)
    assert decision.deny is not None
    assert decision.deny.id == "terms.klout.banned-purpose"
    assert decision.deny.reason == "The terms ban it."
    assert decision.deny.source == "http://example.invalid/terms"
    assert decision.deny.line == 15
    assert decision.rule_ids == ("terms.klout.banned-purpose", "deny-employment")
    # Another upstream's terms do not apply.
    assert "terms.klout.banned-purpose" not in evaluate(context(purpose="sales"), policy).rule_ids


def test_objection_list_and_cache_age_are_exposed() -> None:
    """The compiled policy answers the proxy's other questions."""
    pseudonym = "hmac-sha256:" + "ab" * 32
    text = (
        MINIMAL.replace(
            "    neutral: {score: 40}\n",
            "    neutral: {score: 40}\n    terms: {max_cache_age: 7d}\n",
        )
        + f"objections: ['{pseudonym}']\n"
    )
    policy = compiled(text)
    assert pseudonym in policy.objections
    assert policy.max_cache_age("klout") == 7 * 86400
    assert policy.upstreams["klout"].neutral.score == 40
    assert policy.clients["crm"].kind == "crm"


# -- a reference model checks the index --------------------------------------------------


def _matches_route(pattern: str, route: str) -> bool:
    if pattern.endswith("/**"):
        return route.startswith(pattern[:-2])
    want, got = pattern.split("/"), route.split("/")
    return len(want) == len(got) and all(
        w == g or w == "*" or (w.startswith("{") and w.endswith("}") and g != "")
        for w, g in zip(want, got, strict=True)
    )


def _listed(value: object) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]


def reference_matches(policy: Policy, ctx: LookupContext) -> list[str]:
    """Which rules match, checked naively one by one (what the index must agree with)."""
    implicit: list[str] = []
    clients = {c.id: c for c in policy.clients}
    if ctx.client not in clients:
        implicit.append("policy.unknown-client")
    if ctx.upstream not in {u.name for u in policy.upstreams}:
        implicit.append("policy.unknown-upstream")
    if ctx.purpose not in policy.purposes:
        implicit.append("policy.unknown-purpose")
    elif ctx.client in clients and not any(
        ctx.purpose == p or ctx.purpose.startswith(p + ".") for p in clients[ctx.client].purposes
    ):
        implicit.append("policy.purpose-not-registered")
    rules: list[Rule] = list(policy.rules)
    from gateway.policies.model import When

    for up in policy.upstreams:
        if up.terms.banned_purposes:
            rules.append(
                Rule(
                    id=f"terms.{up.name}.banned-purpose",
                    reason="",
                    source="",
                    when=When(upstream=up.name, purpose=up.terms.banned_purposes),
                    action="deny",
                )
            )
    matched = []
    for rule in rules:
        w = rule.when
        checks: list[tuple[object, Callable[[str], bool]]] = [
            (w.client, lambda v: ctx.client == v),
            (w.client_kind, lambda v: ctx.client_kind == v),
            (w.upstream, lambda v: ctx.upstream == v),
            # Purposes outside the vocabulary match no purpose rule at all.
            (
                w.purpose,
                lambda v: (
                    ctx.purpose in policy.purposes
                    and (ctx.purpose == v or ctx.purpose.startswith(v + "."))
                ),
            ),
            (w.route, lambda v: _matches_route(v, ctx.route)),
            (w.outcome, lambda v: ctx.outcome == v),
        ]
        if all(
            cond is None or any(test(v) for v in _listed(cond) or []) for cond, test in checks
        ) and all(ctx.attributes.get(k) == v for k, v in (w.attributes or {}).items()):
            matched.append(rule.id)
    return implicit + matched


@settings(max_examples=120, deadline=None)
@given(policy=policies(), data=st.data())
def test_evaluation_agrees_with_the_reference_model(policy: Policy, data: st.DataObject) -> None:
    """The index matches exactly the rules a naive rule-by-rule check matches."""
    compiled_policy = compile_policy(policy)
    ctx = data.draw(contexts())
    decision = evaluate(ctx, compiled_policy)
    assert sorted(decision.rule_ids) == sorted(reference_matches(policy, ctx))
    assert decision.allowed == all(m.action != "deny" for m in decision.matched)


@settings(max_examples=120, deadline=None)
@given(policy=policies(), data=st.data())
def test_evaluation_never_raises_on_a_valid_context(policy: Policy, data: st.DataObject) -> None:
    """Any context, including spoofed and unknown values, gets a decision naming its denial."""
    compiled_policy = compile_policy(policy)
    decision = evaluate(data.draw(contexts()), compiled_policy)
    assert decision.allowed == (decision.deny is None)
    if decision.deny is not None:
        assert decision.deny in decision.matched
