"""Compile a policy once into a frozen index, so deciding costs the same for 10 or 1,000 rules.

Each rule gets one bit (bit *i* = the *i*-th rule in file order). For every
condition a rule may have (client, client kind, purpose, upstream, route,
outcome) the index holds, per value, the bitset of rules that accept that value,
plus the bitset of rules that do not care about that condition. Deciding is then
a handful of dictionary look-ups and ``&`` of Python integers; only the rare
``attributes`` condition is checked rule by rule, on the few candidates left.

Purposes are a hierarchy: a rule on ``employment`` covers
``employment.recruitment``. For each purpose of the vocabulary the index stores
the union of the rules on it and on all its ancestors, computed here once.

Route conditions are route templates (``/v2/user.json/{kloutId}/score``) or globs
(``*`` stays within one path segment, ``**`` crosses segments). A ``{name}`` in a
pattern matches any one segment, so it also matches the adapter's own placeholder
whatever it is called.

Vendor terms add rules of their own: each upstream's ``terms.banned_purposes``
becomes an implicit deny rule ``terms.<upstream>.banned-purpose``, so a denial
always names a rule, a reason and a source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gateway.policies.loader import PolicySource, parse_duration, policy_version, read_policy
from gateway.policies.model import (
    OUTCOMES,
    ActionName,
    Client,
    Decision,
    Limit,
    MatchedRule,
    Policy,
    Rule,
    Upstream,
    When,
)

__all__ = [
    "POLICY_RULES",
    "CompiledPolicy",
    "CompiledRule",
    "compile_policy",
    "load_policy",
    "purpose_ancestors",
]

# The gateway's own rules, for lookups the policy cannot judge. ``settings.default_decision``
# is ``deny``: what the policy does not know, it refuses, and the refusal names a rule.
POLICY_RULES: Mapping[str, MatchedRule] = MappingProxyType(
    {
        "policy.unknown-client": MatchedRule(
            id="policy.unknown-client",
            action="deny",
            reason="The calling system is not listed under 'clients' in the policy, "
            "so it may not look anyone up.",
            source="policies.yaml, section 'clients' (settings.default_decision: deny)",
        ),
        "policy.unknown-upstream": MatchedRule(
            id="policy.unknown-upstream",
            action="deny",
            reason="The scoring API is not listed under 'upstreams' in the policy.",
            source="policies.yaml, section 'upstreams' (settings.default_decision: deny)",
        ),
        "policy.unknown-purpose": MatchedRule(
            id="policy.unknown-purpose",
            action="deny",
            reason="The purpose is not in the policy's purpose vocabulary; purposes must be "
            "written exactly as listed (lowercase, dotted).",
            source="policies.yaml, section 'purposes' (settings.default_decision: deny)",
        ),
        "policy.purpose-not-registered": MatchedRule(
            id="policy.purpose-not-registered",
            action="deny",
            reason="The client is not registered for this purpose; data collected for one "
            "purpose may not be used for another.",
            source="GDPR Art. 5(1)(b), purpose limitation: https://gdpr-info.eu/art-5-gdpr/",
        ),
    }
)


def purpose_ancestors(purpose: str) -> list[str]:
    """``employment.recruitment`` -> ``["employment.recruitment", "employment"]``."""
    out = [purpose]
    while "." in purpose:
        purpose = purpose.rpartition(".")[0]
        out.append(purpose)
    return out


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to apply: its bit, its action and the record the decision lists."""

    index: int
    id: str
    action: ActionName
    matched: MatchedRule
    fields: tuple[str, ...]
    limit: Limit | None
    attributes: tuple[tuple[str, str], ...] | None
    line: int | None


class _Dimension:
    """Rules that accept each value of one condition, and those without the condition."""

    __slots__ = ("by_value", "wild")

    def __init__(self) -> None:
        self.wild = 0
        self.by_value: dict[str, int] = {}

    def add(self, bit: int, values: str | Sequence[str] | None) -> None:
        if values is None:
            self.wild |= bit
            return
        for value in [values] if isinstance(values, str) else values:
            self.by_value[value] = self.by_value.get(value, 0) | bit

    def table(self) -> dict[str, int]:
        return {value: bits | self.wild for value, bits in self.by_value.items()}


def _route_regex(pattern: str) -> re.Pattern[str] | None:
    """A regex for a route glob or template; ``None`` for a plain exact route."""
    if "*" not in pattern and "{" not in pattern:
        return None
    parts: list[str] = []
    for piece in re.split(r"(\*\*|\*|\{[^/{}]*\})", pattern):
        if piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece.startswith("{") and piece.endswith("}"):
            parts.append("[^/]+")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


_ROUTE_CACHE_MAX = 4096


class CompiledPolicy:
    """A checked policy compiled into an index. Immutable once built; safe to share.

    ``evaluate`` reads the underscore attributes directly; everything else uses the
    public ones.
    """

    policy: Policy
    version: str
    path: str
    clients: Mapping[str, Client]
    upstreams: Mapping[str, Upstream]
    objections: frozenset[str]
    purposes: frozenset[str]
    rules: tuple[CompiledRule, ...]

    def __init__(self, source: PolicySource, *, memo_size: int = 65536) -> None:
        """Build the index. ``memo_size`` bounds the table of decisions already made
        (see ``evaluate``); 0 turns it off, for measuring the cold path."""
        policy = source.policy
        self.policy = policy
        self.version = source.version
        self.path = source.path
        self.clients = MappingProxyType({c.id: c for c in policy.clients})
        self.upstreams = MappingProxyType({u.name: u for u in policy.upstreams})
        self.objections = frozenset(policy.objections)
        self.purposes = frozenset(policy.purposes)

        self._allowed_purposes: dict[str, frozenset[str]] = {
            c.id: frozenset(
                p for p in self.purposes if any(a in c.purposes for a in purpose_ancestors(p))
            )
            for c in policy.clients
        }
        self._cache_age = {
            u.name: parse_duration(u.terms.max_cache_age) if u.terms.max_cache_age else None
            for u in policy.upstreams
        }

        ordered = _ordered_rules(source)
        self.rules = tuple(
            CompiledRule(
                index=i,
                id=rule.id,
                action=rule.action,
                matched=MatchedRule(
                    id=rule.id,
                    action=rule.action,
                    reason=rule.reason,
                    source=rule.source,
                    line=line,
                ),
                fields=tuple(rule.fields or ()),
                limit=rule.limit,
                attributes=tuple(sorted(rule.when.attributes.items()))
                if rule.when.attributes
                else None,
                line=line,
            )
            for i, (rule, line) in enumerate(ordered)
        )
        self._lines = MappingProxyType({r.id: r.line for r in self.rules})

        client, kind, upstream, outcome = _Dimension(), _Dimension(), _Dimension(), _Dimension()
        purpose = _Dimension()
        self._route_wild = 0
        route_exact: dict[str, int] = {}
        route_patterns: list[tuple[re.Pattern[str], int]] = []
        self._attr_mask = 0
        for i, (rule, _line) in enumerate(ordered):
            bit = 1 << i
            when = rule.when
            client.add(bit, when.client)
            kind.add(bit, when.client_kind)
            upstream.add(bit, when.upstream)
            purpose.add(bit, when.purpose)
            outcome.add(bit, when.outcome)
            if when.route is None:
                self._route_wild |= bit
            else:
                for pattern in [when.route] if isinstance(when.route, str) else when.route:
                    regex = _route_regex(pattern)
                    if regex is None:
                        route_exact[pattern] = route_exact.get(pattern, 0) | bit
                    else:
                        route_patterns.append((regex, bit))
            if when.attributes:
                self._attr_mask |= bit

        self._all = (1 << len(ordered)) - 1
        self._client_wild, self._client = client.wild, client.table()
        self._kind_wild, self._kind = kind.wild, kind.table()
        self._upstream_wild, self._upstream = upstream.wild, upstream.table()
        # Rules without an outcome condition apply whatever the outcome, including
        # before the upstream is asked (outcome None); rules with one apply only then.
        self._outcome: dict[str | None, int] = {None: outcome.wild}
        self._outcome.update({o: outcome.wild | outcome.by_value.get(o, 0) for o in OUTCOMES})
        self._outcome_wild = outcome.wild

        self._purpose_rules = dict(purpose.by_value)
        self._purpose_wild = purpose.wild
        self._purpose: dict[str, int] = {p: self.purpose_bits(p) for p in self.purposes}

        self._route_exact = route_exact
        self._route_patterns = tuple(route_patterns)
        self._route_cache: dict[str, int] = {}
        self._upstream_names = frozenset(self.upstreams)
        # A decision depends only on which rules matched and which ``policy.*`` checks
        # failed, so it is made once per combination and then looked up. Real traffic
        # has few combinations (clients x purposes x routes x outcomes).
        self._decisions: dict[tuple[int, int], Decision] = {}
        self._memo_size = memo_size

    # -- index look-ups used by evaluate ------------------------------------------------

    def purpose_bits(self, purpose: str) -> int:
        """Rules that apply to ``purpose``: on it, on any ancestor, or on no purpose."""
        bits = self._purpose_wild
        for ancestor in purpose_ancestors(purpose):
            bits |= self._purpose_rules.get(ancestor, 0)
        return bits

    def route_bits(self, route: str) -> int:
        """Rules that apply to ``route`` (a template such as ``/v2/user.json/{kloutId}``)."""
        cached = self._route_cache.get(route)
        if cached is not None:
            return cached
        bits = self._route_bits(route)
        # Routes are the adapters' templates, a small set; the bound only guards
        # against a caller passing raw paths.
        if len(self._route_cache) < _ROUTE_CACHE_MAX:
            self._route_cache[route] = bits
        return bits

    def _route_bits(self, route: str) -> int:
        bits = self._route_wild | self._route_exact.get(route, 0)
        for regex, bit in self._route_patterns:
            if regex.fullmatch(route):
                bits |= bit
        return bits

    # -- questions the proxy and the CLI ask ----------------------------------------------

    def purpose_allowed(self, client: str, purpose: str) -> bool:
        """Whether ``client`` is registered for ``purpose``, or for a purpose above it.

        A client registered for ``marketing.communications`` may declare the narrower
        ``marketing.communications.email``; never the other way round. The purpose must
        be in the vocabulary, written exactly.
        """
        allowed = self._allowed_purposes.get(client)
        return allowed is not None and purpose in allowed

    def rule_line(self, rule_id: str) -> int | None:
        """The line of the rule in the policy file (``None`` for the gateway's own rules)."""
        return self._lines.get(rule_id)

    def max_cache_age(self, upstream: str) -> int | None:
        """Seconds an answer from ``upstream`` may be cached under its terms, if limited."""
        return self._cache_age.get(upstream)

    def __repr__(self) -> str:
        return f"<CompiledPolicy {self.version[:19]} rules={len(self.rules)} path={self.path!r}>"


def _ordered_rules(source: PolicySource) -> list[tuple[Rule, int | None]]:
    """File rules plus implicit vendor-terms rules, in the order they appear in the file."""
    rules: list[tuple[Rule, int | None]] = [
        (rule, source.rule_lines.get(rule.id)) for rule in source.policy.rules
    ]
    for up in source.policy.upstreams:
        if up.terms.banned_purposes:
            reason = up.terms.reason or (
                f"The terms of use of '{up.name}' forbid looking people up for "
                + ", ".join(up.terms.banned_purposes)
                + "."
            )
            rules.append(
                (
                    Rule(
                        id=f"terms.{up.name}.banned-purpose",
                        reason=reason,
                        source=up.terms.source or f"terms of use of '{up.name}'",
                        when=When(upstream=up.name, purpose=list(up.terms.banned_purposes)),
                        action="deny",
                    ),
                    source.terms_lines.get(up.name),
                )
            )
    # ``sorted`` is stable: rules without a line keep their relative order, last.
    return sorted(rules, key=lambda item: item[1] if item[1] is not None else 1 << 60)


def compile_policy(source: PolicySource | Policy, *, memo_size: int = 65536) -> CompiledPolicy:
    """Compile a checked policy. A bare :class:`Policy` (tests, benchmarks) has no lines."""
    if isinstance(source, Policy):
        source = PolicySource(policy=source, version=policy_version(source), path="<memory>")
    return CompiledPolicy(source, memo_size=memo_size)


def load_policy(path: str | Path) -> CompiledPolicy:
    """Read, check and compile a policy file; raises ``PolicyError`` listing every problem."""
    return compile_policy(read_policy(path))
