"""What changed between two policies, in plain words, and whether it loosens them.

:func:`policy_diff` lists every change a compliance officer would want to read
before a policy goes live: rules added, removed, changed (field by field) or
reordered; clients; purposes; upstreams and their terms; settings; the controller
block; objections by count only (they are pseudonyms of people).

:func:`loosenings` is the static check behind the warning for a file saved
outside ``gateway policy apply``: every change that may give a caller more than
before, named. It is deliberately cautious (a changed deny rule may be narrower,
so it is listed); ``gateway policy replay`` measures the real effect on traffic.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.policies.model import Policy, Rule

__all__ = ["loosenings", "policy_diff", "summary"]

RESTRICTIVE = frozenset({"deny", "neutralize", "redact", "coarsen", "limit"})


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return str(value)


def _fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``path: old → new`` for every leaf that differs (structs as dicts)."""
    a = msgspec.to_builtins(old) if isinstance(old, msgspec.Struct) else old
    b = msgspec.to_builtins(new) if isinstance(new, msgspec.Struct) else new
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _fields(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    if a == b:
        return []
    return [f"{prefix.rstrip('.')}: {_show(a)} → {_show(b)}"]


def _when(rule: Rule) -> str:
    conditions = msgspec.to_builtins(rule.when)
    text = ", ".join(f"{k} {_show(v)}" for k, v in conditions.items() if v is not None)
    return f"when {text}" if text else "always"


def _keyed(old: dict[str, Any], new: dict[str, Any], what: str) -> list[str]:
    lines = [f"{what} added: {k}" for k in new if k not in old]
    lines += [f"{what} removed: {k}" for k in old if k not in new]
    for key in old:
        if key in new and old[key] != new[key]:
            changes = _fields(old[key], new[key])
            lines.append(f"{what} changed: {key}: " + "; ".join(changes))
    return lines


def policy_diff(old: Policy, new: Policy) -> list[str]:
    """Every change from ``old`` to ``new``, one plain sentence each."""
    lines: list[str] = []
    old_rules = {r.id: r for r in old.rules}
    new_rules = {r.id: r for r in new.rules}
    for rule in new.rules:
        if rule.id not in old_rules:
            lines.append(f"rule added: {rule.id} ({rule.action}, {_when(rule)})")
    for rule in old.rules:
        if rule.id not in new_rules:
            lines.append(f"rule removed: {rule.id} ({rule.action}, {_when(rule)})")
    for rule in old.rules:
        other = new_rules.get(rule.id)
        if other is not None and other != rule:
            lines.append(f"rule changed: {rule.id}: " + "; ".join(_fields(rule, other)))
    kept_old = [r.id for r in old.rules if r.id in new_rules]
    kept_new = [r.id for r in new.rules if r.id in old_rules]
    if kept_old != kept_new:
        lines.append("rules reordered: " + ", ".join(kept_new))
    lines += _keyed({c.id: c for c in old.clients}, {c.id: c for c in new.clients}, "client")
    lines += _keyed(dict(old.purposes), dict(new.purposes), "purpose")
    lines += _keyed({u.name: u for u in old.upstreams}, {u.name: u for u in new.upstreams},
                    "upstream")  # fmt: skip
    lines += [f"settings changed: {line}" for line in _fields(old.settings, new.settings)]
    for name in ("controller",):
        if getattr(old, name, None) != getattr(new, name, None):
            changes = _fields(getattr(old, name, None), getattr(new, name, None))
            lines.append(f"{name} changed: " + "; ".join(changes))
    if old.objections != new.objections:
        added = len(set(new.objections) - set(old.objections))
        removed = len(set(old.objections) - set(new.objections))
        lines.append(f"objections: {added} added, {removed} removed")
    return lines


def summary(lines: list[str]) -> str:
    """One line for the audit record: counts by kind of change, with rule ids."""
    if not lines:
        return "no change in meaning (comments or layout only)"
    counts: dict[str, list[str]] = {}
    for line in lines:
        head, _, rest = line.partition(": ")
        counts.setdefault(head, []).append(rest.split(" ", 1)[0].rstrip(":"))
    parts = []
    for head, names in counts.items():
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        parts.append(f"{head}: {shown}")
    return "; ".join(parts)


def _laxer(old: float | None, new: float | None) -> bool:
    return old is not None and (new is None or new > old)


def loosenings(old: Policy, new: Policy) -> list[str]:
    """Every change that may give a caller more than before."""
    found: list[str] = []
    new_rules = {r.id: r for r in new.rules}
    for rule in old.rules:
        other = new_rules.get(rule.id)
        if rule.action not in RESTRICTIVE:
            continue
        if other is None:
            found.append(f"{rule.action} rule {rule.id} removed")
        elif other.action != rule.action:
            found.append(f"{rule.action} rule {rule.id} became {other.action}")
        elif other.when != rule.when:
            found.append(f"{rule.action} rule {rule.id} applies to other lookups")
        elif rule.action == "redact" and set(rule.fields or ()) - set(other.fields or ()):
            found.append(f"redact rule {rule.id} removes fewer fields")
        elif (
            rule.action == "limit"
            and rule.limit
            and other.limit
            and (
                _laxer(rule.limit.calls_per_second, other.limit.calls_per_second)
                or _laxer(rule.limit.calls_per_day, other.limit.calls_per_day)
            )
        ):
            found.append(f"limit rule {rule.id} allows more calls")
    new_clients = {c.id: c for c in new.clients}
    for client in old.clients:
        now = new_clients.get(client.id)
        if now is not None and set(now.purposes) - set(client.purposes):
            extra = ", ".join(sorted(set(now.purposes) - set(client.purposes)))
            found.append(f"client {client.id} may declare more purposes: {extra}")
        if now is not None and now.kind != client.kind:
            found.append(f"client {client.id} changed kind {client.kind} → {now.kind}")
    new_upstreams = {u.name: u for u in new.upstreams}
    for upstream in old.upstreams:
        changed = new_upstreams.get(upstream.name)
        if changed is None:
            continue
        t, u = upstream.terms, changed.terms
        if set(t.banned_purposes) - set(u.banned_purposes):
            gone = ", ".join(sorted(set(t.banned_purposes) - set(u.banned_purposes)))
            found.append(f"upstream {upstream.name} no longer bans {gone}")
        if _laxer(t.calls_per_second, u.calls_per_second) or _laxer(
            t.calls_per_day, u.calls_per_day
        ):
            found.append(f"upstream {upstream.name} terms allow more calls")
        if t.max_cache_age != u.max_cache_age and u.max_cache_age is not None:
            found.append(
                f"upstream {upstream.name} cache age {t.max_cache_age} → {u.max_cache_age}"
            )
    if new.settings.reveal_neutralized and not old.settings.reveal_neutralized:
        found.append("neutral answers are now revealed to callers")
    if set(old.objections) - set(new.objections):
        found.append(f"{len(set(old.objections) - set(new.objections))} objections removed")
    return found
