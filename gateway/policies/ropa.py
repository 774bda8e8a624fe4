"""The GDPR Art. 30 record of processing activities, generated from ``policies.yaml``.

Art. 30(1) asks a controller to keep, for each processing activity: (a) its name
and contact details, and those of its data protection officer; (b) the purposes;
(c) the categories of data subjects and of personal data; (d) the recipients;
(e) transfers to third countries; (f) the time limits for erasure; (g) the
security measures. The policy file already says most of it (purposes, clients,
upstreams, terms, rules); the ``controller`` block and each upstream's
``vendor``, ``vendor_country``, ``data_subjects`` and ``data_categories`` supply
the rest.

One entry per purpose of the vocabulary: the clients registered for it (or for a
purpose above it), whether the policy lets it happen at all (decided with the real
evaluator, for every registered client and every upstream), the recipients, the
data, the cache and audit retention, and every rule that restricts it, cited with
its ``source``. Formats: Markdown, HTML (self-contained), CSV.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field

import msgspec

from gateway.policies.compile import CompiledPolicy, CompiledRule, purpose_ancestors
from gateway.policies.evaluate import evaluate
from gateway.policies.model import OUTCOMES, LookupContext, Upstream

__all__ = ["ProcessingEntry", "entries", "render"]

RESTRICTIVE = ("deny", "neutralize", "redact", "coarsen", "limit")
ACTION_WORDS = {
    "deny": "refused",
    "neutralize": "neutral answer",
    "redact": "fields removed",
    "coarsen": "score shown as a band",
    "limit": "rate limited",
}
NOT_GIVEN = "not given in policies.yaml"


@dataclass(frozen=True, slots=True)
class CitedRule:
    id: str
    action: str
    reason: str
    source: str


@dataclass(slots=True)
class ProcessingEntry:
    """One purpose, as Art. 30(1) wants it described."""

    purpose: str
    meaning: str
    status: str  # in plain words: refused by ..., allowed for ..., no client registered
    clients: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    data_subjects: list[str] = field(default_factory=list)
    data_categories: list[str] = field(default_factory=list)
    cache_retention: list[str] = field(default_factory=list)
    rules: list[CitedRule] = field(default_factory=list)


def _covers(rule_purpose: str | list[str] | None, purpose: str) -> bool:
    if rule_purpose is None:
        return True
    wanted = [rule_purpose] if isinstance(rule_purpose, str) else rule_purpose
    return any(a in wanted for a in purpose_ancestors(purpose))


def _recipient(upstream: Upstream) -> str:
    vendor = upstream.vendor or "vendor not named"
    return f"{upstream.name} ({vendor})"


def entries(policy: CompiledPolicy) -> list[ProcessingEntry]:
    """One entry per purpose, in the order of the vocabulary."""
    model = policy.policy
    conditions = _purpose_conditions(policy)
    result: list[ProcessingEntry] = []
    for purpose, meaning in model.purposes.items():
        clients = [c for c in model.clients if policy.purpose_allowed(c.id, purpose)]
        allowed_to: dict[str, set[str]] = {}
        denied_by: set[str] = set()
        restricting: set[str] = set()
        denying: set[str] = set()
        for client in clients:
            for upstream in model.upstreams:
                context = LookupContext(
                    client=client.id,
                    client_kind=client.kind,
                    purpose=purpose,
                    upstream=upstream.name,
                    route="",
                )
                decision = evaluate(context, policy)
                if decision.allowed:
                    allowed_to.setdefault(upstream.name, set()).add(client.id)
                elif decision.deny is not None:
                    denied_by.add(decision.deny.id)
                    denying |= {m.id for m in decision.matched if m.action == "deny"}
                # Every rule that would act on such a lookup, whatever the vendor says.
                for outcome in (None, *OUTCOMES):
                    after = evaluate(msgspec.structs.replace(context, outcome=outcome), policy)
                    restricting |= {m.id for m in after.matched if m.action in RESTRICTIVE}
        if clients and not allowed_to:
            # Refused outright: the rules that refuse it are the ones that matter.
            restricting = denying
        if not clients:
            # Nobody may ask; cite the rules written for this purpose itself.
            restricting = {
                r.id
                for r in policy.rules
                if r.action in RESTRICTIVE
                and conditions.get(r.id) is not None
                and _covers(conditions.get(r.id), purpose)
            }
        if not clients:
            status = "no client is registered for it"
        elif not allowed_to:
            status = "refused by " + ", ".join(sorted(denied_by))
        else:
            users = sorted({c for cs in allowed_to.values() for c in cs})
            status = "allowed for " + ", ".join(users)
            if denied_by:
                status += "; refused otherwise by " + ", ".join(sorted(denied_by))
        upstreams = [u for u in model.upstreams if u.name in allowed_to]
        entry = ProcessingEntry(
            purpose=purpose,
            meaning=meaning,
            status=status,
            clients=[f"{c.id} ({c.kind})" for c in clients],
            recipients=[_recipient(u) for u in upstreams],
            countries=sorted({u.vendor_country or NOT_GIVEN for u in upstreams}),
            data_subjects=sorted({s for u in upstreams for s in u.data_subjects}),
            data_categories=sorted({d for u in upstreams for d in u.data_categories}),
            cache_retention=[
                f"{u.name}: at most {u.terms.max_cache_age}"
                if u.terms.max_cache_age
                else f"{u.name}: no limit in the terms"
                for u in upstreams
            ],
            rules=[_cite(r) for r in policy.rules if r.id in restricting],
        )
        result.append(entry)
    return result


def _purpose_conditions(policy: CompiledPolicy) -> dict[str, str | list[str] | None]:
    """Each rule's purpose condition, the implicit ``terms.<upstream>.banned-purpose``
    rules included."""
    conditions: dict[str, str | list[str] | None] = {
        r.id: r.when.purpose for r in policy.policy.rules
    }
    for upstream in policy.policy.upstreams:
        if upstream.terms.banned_purposes:
            conditions[f"terms.{upstream.name}.banned-purpose"] = list(
                upstream.terms.banned_purposes
            )
    return conditions


def _cite(rule: CompiledRule) -> CitedRule:
    return CitedRule(
        id=rule.id, action=rule.action, reason=rule.matched.reason, source=rule.matched.source
    )


def _controller_rows(policy: CompiledPolicy) -> list[tuple[str, str]]:
    c = policy.policy.controller
    return [
        ("Controller", c.name if c else NOT_GIVEN),
        ("Contact", c.contact if c else NOT_GIVEN),
        ("Data protection officer", (c.dpo if c else None) or NOT_GIVEN),
        ("Representative", (c.representative if c else None) or "none named"),
        ("Audit records kept", (c.audit_retention if c else None) or NOT_GIVEN),
        ("Security measures", (c.security if c else None) or NOT_GIVEN),
        ("Policy version", policy.version),
    ]


def _join(items: list[str]) -> str:
    return "; ".join(items) if items else "—"


def render(policy: CompiledPolicy, fmt: str) -> str:
    """The record in ``md``, ``html`` or ``csv``."""
    items = entries(policy)
    if fmt == "csv":
        return _csv(policy, items)
    if fmt == "html":
        return _html(policy, items)
    return _markdown(policy, items)


def _fields(entry: ProcessingEntry, policy: CompiledPolicy) -> list[tuple[str, str]]:
    c = policy.policy.controller
    return [
        ("Meaning", entry.meaning),
        ("Status under the policy", entry.status),
        ("Clients (internal systems)", _join(entry.clients)),
        ("Categories of data subjects", _join(entry.data_subjects)),
        ("Categories of personal data", _join(entry.data_categories)),
        ("Recipients (upstreams and vendors)", _join(entry.recipients)),
        ("Vendor countries (transfers)", _join(entry.countries)),
        ("Cache retention", _join(entry.cache_retention)),
        ("Audit retention", (c.audit_retention if c else None) or NOT_GIVEN),
    ]


def _markdown(policy: CompiledPolicy, items: list[ProcessingEntry]) -> str:
    out = [
        "# Record of processing activities (GDPR Art. 30)",
        "",
        f"Generated from `{policy.path}`, policy version `{policy.version}`.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_md(v)} |" for k, v in _controller_rows(policy)),
        "",
    ]
    for entry in items:
        out += [f"## Purpose `{entry.purpose}`", "", "| | |", "|---|---|"]
        out += [f"| {k} | {_md(v)} |" for k, v in _fields(entry, policy)]
        out.append("")
        if entry.rules:
            out.append("Rules that restrict this processing:")
            out.append("")
            for rule in entry.rules:
                out.append(
                    f"- **{rule.id}** ({ACTION_WORDS[rule.action]}): {_md(rule.reason)} "
                    f"Source: {_md(rule.source)}"
                )
            out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _csv(policy: CompiledPolicy, items: list[ProcessingEntry]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    controller = dict(_controller_rows(policy))
    writer.writerow(
        ["purpose", "meaning", "status", "clients", "data_subjects", "data_categories",
         "recipients", "vendor_countries", "cache_retention", "audit_retention", "rules",
         "controller", "contact", "dpo"]
    )  # fmt: skip
    for e in items:
        writer.writerow(
            [e.purpose, e.meaning, e.status, _join(e.clients), _join(e.data_subjects),
             _join(e.data_categories), _join(e.recipients), _join(e.countries),
             _join(e.cache_retention), controller["Audit records kept"],
             _join([f"{r.id} ({r.action}): {' '.join(r.source.split())}" for r in e.rules]),
             controller["Controller"], controller["Contact"],
             controller["Data protection officer"]]
        )  # fmt: skip
    return buffer.getvalue()


def _html(policy: CompiledPolicy, items: list[ProcessingEntry]) -> str:
    e = html.escape

    def table(rows: list[tuple[str, str]]) -> str:
        body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"

    sections = []
    for entry in items:
        rules = "".join(
            f"<li><strong>{e(r.id)}</strong> ({e(ACTION_WORDS[r.action])}): {e(r.reason)}"
            f'<div class="src">Source: {e(r.source)}</div></li>'
            for r in entry.rules
        )
        sections.append(
            f'<section id="{e(entry.purpose)}"><h2>Purpose <code>{e(entry.purpose)}</code></h2>'
            f"{table(_fields(entry, policy))}"
            + (f"<p>Rules that restrict this processing:</p><ul>{rules}</ul>" if rules else "")
            + "</section>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Record of processing activities (GDPR Art. 30)</title><style>"
        "body{font:15px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}th,td{border-bottom:1px solid #eee;"
        "padding:.3em .8em;text-align:left;vertical-align:top}th{width:16em;background:#f5f5f5}"
        ".src{color:#555;font-size:.9em}</style></head><body>"
        "<h1>Record of processing activities (GDPR Art. 30)</h1>"
        f"<p>Generated from <code>{e(policy.path)}</code>, policy version "
        f"<code>{e(policy.version)}</code>.</p>{table(_controller_rows(policy))}"
        + "".join(sections)
        + "</body></html>\n"
    )
