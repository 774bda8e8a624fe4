"""Decide one lookup: ``evaluate(context, policy) -> Decision``. Pure; never raises.

The same context and policy always give the same decision; nothing is read from
the clock, the network or any global. How the result is built:

- **Deny wins.** If any matching rule denies, the lookup is refused, whatever
  else matched; ``Decision.deny`` names the first denying rule in file order.
- **Every matching rule is listed**, in file order, in ``Decision.matched``, so
  the audit record and ``gateway policy explain`` show the whole reasoning.
- **Actions add up.** ``neutralize`` and ``coarsen`` are on if any matching rule
  says so; ``redact`` is the union of the fields of all matching redact rules;
  ``limits`` lists every matching limit with its rule id.
- **Outcome.** A rule with ``when.outcome`` matches only when the context's
  outcome is one of those listed; a rule without it matches whatever the outcome.
  The proxy therefore evaluates twice: before calling the upstream, with outcome
  ``None`` (or ``"objected"`` for a subject on the objection list, who is never
  sent upstream), to decide whether to call at all and under which limits; and
  after, with the outcome its adapter classified (``found``, ``missing``, ...),
  to decide how to transform the answer.
- **What the policy cannot judge is refused.** An unknown client or upstream, a
  purpose outside the vocabulary (``Employment``, ``employment `` or a look-alike
  letter are not ``employment``: purposes match exactly, byte for byte), or a
  purpose the client is not registered for, adds a denying ``policy.*`` rule.
"""

from __future__ import annotations

from gateway.policies.compile import POLICY_RULES, CompiledPolicy
from gateway.policies.model import Decision, Limit, LookupContext, MatchedRule

__all__ = ["evaluate"]

# The gateway's own checks, as flags of the memo key, in the order they are listed.
_UNKNOWN_CLIENT, _UNKNOWN_UPSTREAM, _UNKNOWN_PURPOSE, _NOT_REGISTERED = 1, 2, 4, 8
_IMPLICIT = (
    (_UNKNOWN_CLIENT, POLICY_RULES["policy.unknown-client"]),
    (_UNKNOWN_UPSTREAM, POLICY_RULES["policy.unknown-upstream"]),
    (_UNKNOWN_PURPOSE, POLICY_RULES["policy.unknown-purpose"]),
    (_NOT_REGISTERED, POLICY_RULES["policy.purpose-not-registered"]),
)


def evaluate(context: LookupContext, policy: CompiledPolicy) -> Decision:
    """Decide ``context`` under ``policy``; see the module docstring for the rules.

    Cost: one look-up per condition and an ``&`` of integers, then, because the
    decision depends only on which rules matched, one look-up in the table of
    decisions already made (filled on first use, bounded in size).
    """
    p = policy
    # Purposes match exactly, byte for byte: one outside the vocabulary matches only
    # rules without a purpose condition (and is refused by a ``policy.*`` rule).
    bits = (
        p._client.get(context.client, p._client_wild)
        & p._kind.get(context.client_kind, p._kind_wild)
        & p._upstream.get(context.upstream, p._upstream_wild)
        & p._purpose.get(context.purpose, p._purpose_wild)
        & p._outcome.get(context.outcome, p._outcome_wild)
    )
    if bits:
        route_bits = p._route_cache.get(context.route)
        bits &= p.route_bits(context.route) if route_bits is None else route_bits
    if bits & p._attr_mask:
        bits = _check_attributes(bits, context, p)

    flags = 0
    allowed_purposes = p._allowed_purposes.get(context.client)
    if allowed_purposes is None:
        flags = _UNKNOWN_CLIENT
    if context.upstream not in p._upstream_names:
        flags |= _UNKNOWN_UPSTREAM
    if context.purpose not in p.purposes:
        flags |= _UNKNOWN_PURPOSE
    elif allowed_purposes is not None and context.purpose not in allowed_purposes:
        flags |= _NOT_REGISTERED

    key = (bits, flags)
    decision = p._decisions.get(key)
    if decision is None:
        decision = _decide(bits, flags, p)
        if len(p._decisions) < p._memo_size:
            p._decisions[key] = decision
    return decision


def _decide(bits: int, flags: int, p: CompiledPolicy) -> Decision:
    """Build the decision for a set of matched rules and failed ``policy.*`` checks."""
    matched: list[MatchedRule] = [rule for flag, rule in _IMPLICIT if flags & flag]
    deny: MatchedRule | None = matched[0] if matched else None
    neutralize = coarsen = False
    redact: list[str] = []
    limits: list[tuple[str, Limit]] = []
    rules = p.rules
    while bits:
        low = bits & -bits
        rule = rules[low.bit_length() - 1]
        bits ^= low
        matched.append(rule.matched)
        action = rule.action
        if action == "deny":
            if deny is None:
                deny = rule.matched
        elif action == "neutralize":
            neutralize = True
        elif action == "coarsen":
            coarsen = True
        elif action == "redact":
            redact.extend(f for f in rule.fields if f not in redact)
        elif action == "limit" and rule.limit is not None:
            limits.append((rule.id, rule.limit))
    return Decision(
        allowed=deny is None,
        matched=tuple(matched),
        policy_version=p.version,
        deny=deny,
        neutralize=neutralize,
        redact=tuple(redact),
        coarsen=coarsen,
        limits=tuple(limits),
    )


def _check_attributes(bits: int, context: LookupContext, p: CompiledPolicy) -> int:
    """Drop candidate rules whose ``attributes`` are not all present with equal values."""
    candidates = bits & p._attr_mask
    attributes = context.attributes
    while candidates:
        low = candidates & -candidates
        candidates ^= low
        rule = p.rules[low.bit_length() - 1]
        for name, value in rule.attributes or ():
            if attributes.get(name) != value:
                bits &= ~low
                break
    return bits
