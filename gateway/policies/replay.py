"""Replay: what a policy change would have done to the lookups already in the log.

Every recorded lookup in the window is decided again, under the active policy and
under the proposed one, with the real evaluator, from what its records hold:
client, client kind, purpose, upstream, route and the vendor's outcome. The two
results are compared as a caller would feel them (:class:`Effect`):

- ``deny`` / ``neutral`` (the policy's neutral answer) / ``real`` (the vendor's
  answer, possibly redacted or coarsened) / ``vendor-failed`` (throttled or error:
  the policy does not change that) / ``limited`` (refused by a rate limit then) /
  ``allowed`` (allowed, but the vendor was never asked, so what it would have said
  is unknown);
- the fields redacted, whether the score is coarsened, and the tightest limits.

A **loosening** gives a caller more than before: deny → anything else, neutral →
real, a redaction or a coarsening removed, or a higher (or removed) limit.
``gateway policy replay`` exits non-zero on any loosening unless told
``--allow-loosening``; ``policy apply`` shows the same summary before writing.

The proxy's order is followed: decide before the call (outcome ``None``, or
``objected`` for someone on the objection list, who is answered neutrally without
the vendor), then after the call with the outcome the vendor gave. Lookups the
log cannot replay (refused before their purpose or route was known) are counted
as such, never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from gateway.audit.lookups import Lookup, iter_events
from gateway.policies.compile import CompiledPolicy
from gateway.policies.evaluate import evaluate
from gateway.policies.model import Decision, LookupContext, Outcome

__all__ = ["CATEGORIES", "LOOSENING", "Effect", "ReplaySummary", "effect", "replay"]

EXAMPLES = 5

CATEGORIES = (
    "allow->deny",
    "deny->allow",
    "newly neutralized",
    "neutral->real",
    "redaction added",
    "redaction removed",
    "coarsening added",
    "coarsening removed",
    "limit lowered",
    "limit raised",
)
LOOSENING = frozenset(
    {"deny->allow", "neutral->real", "redaction removed", "coarsening removed", "limit raised"}
)

_VENDOR_OUTCOMES: frozenset[str] = frozenset(
    {"found", "missing", "pending", "throttled", "error", "objected"}
)


@dataclass(frozen=True, slots=True)
class Effect:
    """What the caller gets for one lookup under one policy."""

    kind: str  # deny | neutral | real | vendor-failed | limited | allowed
    deny_rule: str | None = None
    redact: frozenset[str] = frozenset()
    coarsen: bool = False
    per_second: float | None = None  # the tightest limit that applied
    per_day: int | None = None
    rules: frozenset[str] = frozenset()


def _limits(
    decision: Decision, policy: CompiledPolicy, upstream: str
) -> tuple[float | None, int | None]:
    per_second: list[float] = [
        limit.calls_per_second for _, limit in decision.limits if limit.calls_per_second
    ]
    per_day: list[int] = [
        limit.calls_per_day for _, limit in decision.limits if limit.calls_per_day
    ]
    config = policy.upstreams.get(upstream)
    if config is not None:
        if config.terms.calls_per_second is not None:
            per_second.append(config.terms.calls_per_second)
        if config.terms.calls_per_day is not None:
            per_day.append(config.terms.calls_per_day)
    return (min(per_second) if per_second else None, min(per_day) if per_day else None)


def replayable(lookup: Lookup) -> bool:
    return None not in (lookup.client, lookup.purpose, lookup.upstream, lookup.route)


def effect(lookup: Lookup, policy: CompiledPolicy) -> Effect:
    """Decide ``lookup`` again under ``policy`` (see the module docstring)."""
    context = LookupContext(
        client=lookup.client or "",
        client_kind=lookup.client_kind or "",
        purpose=lookup.purpose or "",
        upstream=lookup.upstream or "",
        route=lookup.route or "",
    )
    recorded = lookup.outcome if lookup.outcome in _VENDOR_OUTCOMES else None
    before = evaluate(context, policy)
    rules = set(before.rule_ids)
    per_second, per_day = _limits(before, policy, context.upstream)
    if not before.allowed:
        return Effect(kind="deny", deny_rule=before.deny.id if before.deny else None,
                      rules=frozenset(rules))  # fmt: skip
    if recorded == "objected":
        local = evaluate(msgspec.structs.replace(context, outcome="objected"), policy)
        rules |= set(local.rule_ids)
        if not local.allowed:
            return Effect(kind="deny", deny_rule=local.deny.id if local.deny else None,
                          rules=frozenset(rules))  # fmt: skip
        return Effect(kind="neutral", rules=frozenset(rules))
    if lookup.error == "limit.exceeded":
        return Effect(kind="limited", per_second=per_second, per_day=per_day,
                      rules=frozenset(rules))  # fmt: skip
    if recorded is None:
        return Effect(kind="allowed", per_second=per_second, per_day=per_day,
                      rules=frozenset(rules))  # fmt: skip
    if recorded in ("throttled", "error"):
        return Effect(kind="vendor-failed", per_second=per_second, per_day=per_day,
                      rules=frozenset(rules))  # fmt: skip
    outcome: Outcome = recorded  # type: ignore[assignment]  # checked against the set above
    after = evaluate(msgspec.structs.replace(context, outcome=outcome), policy)
    rules |= set(after.rule_ids)
    if not after.allowed:
        return Effect(kind="deny", deny_rule=after.deny.id if after.deny else None,
                      rules=frozenset(rules))  # fmt: skip
    kind = "neutral" if recorded in ("missing", "pending") and after.neutralize else "real"
    return Effect(
        kind=kind,
        redact=frozenset(after.redact) if kind == "real" else frozenset(),
        coarsen=after.coarsen if kind == "real" else False,
        per_second=per_second,
        per_day=per_day,
        rules=frozenset(rules),
    )


def _laxer(new: float | None, old: float | None) -> bool:
    return old is not None and (new is None or new > old)


def compare(old: Effect, new: Effect) -> list[str]:
    """The categories of change from ``old`` to ``new`` (empty: the caller gets the same)."""
    changes: list[str] = []
    if old.kind != "deny" and new.kind == "deny":
        return ["allow->deny"]
    if old.kind == "deny" and new.kind != "deny":
        return ["deny->allow"]
    if old.kind == "deny":
        return []
    if old.kind == "real" and new.kind == "neutral":
        changes.append("newly neutralized")
    if old.kind == "neutral" and new.kind == "real":
        changes.append("neutral->real")
    if old.kind == new.kind == "real":
        if new.redact - old.redact:
            changes.append("redaction added")
        if old.redact - new.redact:
            changes.append("redaction removed")
        if new.coarsen and not old.coarsen:
            changes.append("coarsening added")
        if old.coarsen and not new.coarsen:
            changes.append("coarsening removed")
    if _laxer(new.per_second, old.per_second) or _laxer(new.per_day, old.per_day):
        changes.append("limit raised")
    if _laxer(old.per_second, new.per_second) or _laxer(old.per_day, new.per_day):
        changes.append("limit lowered")
    return changes


class Change(msgspec.Struct, kw_only=True):
    count: int = 0
    examples: list[str] = []


class ReplaySummary(msgspec.Struct, kw_only=True):
    """What the proposed policy would have changed, lookup by lookup, counted."""

    old_version: str
    new_version: str
    since: str | None = None
    until: str | None = None
    lookups: int = 0  # lookups in the window
    replayed: int = 0
    not_replayable: int = 0  # refused before their purpose or route was known
    changed: int = 0
    changes: dict[str, Change] = {}
    by_rule: dict[str, int] = {}  # changed lookups, by rule that started or stopped matching
    by_client: dict[str, int] = {}
    by_purpose: dict[str, int] = {}
    loosening: bool = False
    changed_ids: list[str] = []  # every changed lookup, when asked for

    def render(self) -> str:
        """Plain words for the terminal and for ``policy apply``."""
        lines = [
            f"replayed {self.replayed:,} of {self.lookups:,} lookups under "
            f"{_short(self.new_version)} (active: {_short(self.old_version)}); "
            f"{self.changed:,} would change"
        ]
        if self.not_replayable:
            lines.append(
                f"  {self.not_replayable:,} refused before their purpose or route was known "
                "were not replayed"
            )
        for name in CATEGORIES:
            change = self.changes.get(name)
            if change is None or not change.count:
                continue
            flag = "  LOOSENING" if name in LOOSENING else ""
            lines.append(
                f"  {name:<20} {change.count:>8,}{flag}   e.g. {', '.join(change.examples)}"
            )
        for title, counts in (
            ("by rule", self.by_rule),
            ("by client", self.by_client),
            ("by purpose", self.by_purpose),
        ):
            if counts:
                lines.append(f"  {title}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        if self.loosening:
            lines.append("this change LOOSENS the policy: callers would get more than before")
        elif self.changed:
            lines.append("this change only tightens the policy")
        return "\n".join(lines)


def _short(version: str) -> str:
    """``sha256:c5aba31216c4`` for display; the full version is in the JSON."""
    return version[:19]


def replay(
    records: Iterable[tuple[int, bytes]],
    old: CompiledPolicy,
    new: CompiledPolicy,
    *,
    since: str | None = None,
    until: str | None = None,
    keep_ids: bool = False,
) -> ReplaySummary:
    """Re-decide every lookup of ``records`` in the window under ``old`` and ``new``."""
    summary = ReplaySummary(old_version=old.version, new_version=new.version, since=since,
                            until=until)  # fmt: skip
    changes: dict[str, Change] = {}
    by_rule: Counter[str] = Counter()
    by_client: Counter[str] = Counter()
    by_purpose: Counter[str] = Counter()
    for event in iter_events(records, since=since, until=until):
        if not isinstance(event, Lookup) or not event.identified:
            continue
        summary.lookups += 1
        if not replayable(event):
            summary.not_replayable += 1
            continue
        summary.replayed += 1
        before, after = effect(event, old), effect(event, new)
        found = compare(before, after)
        if not found:
            continue
        summary.changed += 1
        if keep_ids:
            summary.changed_ids.append(event.request_id)
        for name in found:
            change = changes.setdefault(name, Change())
            change.count += 1
            if len(change.examples) < EXAMPLES:
                change.examples.append(event.request_id)
        for rule in before.rules ^ after.rules:
            by_rule[rule] += 1
        by_client[event.client or "?"] += 1
        by_purpose[event.purpose or "?"] += 1
    summary.changes = {name: changes[name] for name in CATEGORIES if name in changes}
    summary.by_rule = dict(by_rule.most_common())
    summary.by_client = dict(by_client.most_common())
    summary.by_purpose = dict(by_purpose.most_common())
    summary.loosening = any(name in LOOSENING for name in summary.changes)
    return summary
