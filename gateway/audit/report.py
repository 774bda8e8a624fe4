"""The compliance report: what the log says, in figures a non-programmer can check.

``gateway audit report`` and ``GET /admin/report`` build the same :class:`Report`
from a verified export (the store is exported to a temporary file first, so the
figures and the verification result always come from the same bytes):

1. the export is verified offline (:func:`gateway.audit.verify.verify_export`)
   against pinned public keys: tree size, last checkpoint, key ids;
2. its records are joined into lookups (:mod:`gateway.audit.lookups`): a lookup is
   one request id, however many records or people it has;
3. every figure is a count of lookups, and keeps the request ids behind it (up to
   ``id_limit`` per figure, with the number left out), so each number in the HTML
   links to the requests it counts.

"Hiring lookups blocked" is counted by meaning, not by rule id (staff may rename
rules): a denied lookup whose client kind is ``hr`` or whose purpose is
``employment`` or under it. A denial is attributed to the deny rules among its
matched rules (from the policy given, plus the gateway's own ``policy.*`` and
``terms.*`` rules; a rule the policy does not name counts too); a limit refusal to
the limit rules it matched; a refusal with no such rule to its error code.

The HTML is one self-contained file: inline CSS, inline SVG charts, a few lines
of inline script for sorting tables; no external asset, no network, works offline.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from gateway.audit.export import CheckpointLine, export_jsonl
from gateway.audit.lookups import Lookup, RecordView, iter_events, iter_export_records
from gateway.audit.record import AuditRecord
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_export
from gateway.policies.compile import CompiledPolicy

__all__ = [
    "DECISIONS",
    "Report",
    "build_report",
    "render_html",
    "report_from_export",
    "report_from_store",
]

DECISIONS = ("allow", "neutralize", "deny", "error")
NEUTRAL_OUTCOMES = ("missing", "pending", "objected")
ID_LIMIT = 500


class RequestIds(msgspec.Struct, kw_only=True):
    """The request ids behind one figure: all of them, or the first ``limit``."""

    label: str
    count: int = 0
    ids: list[str] = []
    more: int = 0  # ids counted but not listed


class CheckpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    size: int
    time: str
    key_id: str
    root: str


class Verification(msgspec.Struct, kw_only=True):
    ok: bool
    message: str
    tree_size: int = 0
    records: int = 0
    checkpoints: int = 0
    root: str | None = None
    key_ids: list[str] = []
    last_checkpoint: CheckpointInfo | None = None


class PolicyVersion(msgspec.Struct, kw_only=True):
    version: str
    loads: list[PolicyLoad] = []
    lookups: int = 0
    first_seen: str | None = None
    last_seen: str | None = None


class PolicyLoad(msgspec.Struct, frozen=True, kw_only=True):
    time: str
    status: str  # ok | refused
    actor: str | None = None
    detail: str | None = None
    loosening: bool = False


class Bucket(msgspec.Struct, kw_only=True):
    start: str
    counts: dict[str, int]


class Objections(msgspec.Struct, kw_only=True):
    lookups: int = 0  # lookups answered neutrally because the person objected
    people_withheld: int = 0  # people left out of answers (format 2)
    added: int = 0  # objection.add records
    removed: int = 0


class Report(msgspec.Struct, kw_only=True):
    """Every figure of the report. Counts are lookups unless the name says otherwise."""

    generated: str
    source: str
    since: str | None
    until: str | None
    first: str | None = None
    last: str | None = None
    lookups: int = 0
    people: int = 0  # people asked about, over all lookups
    refused_unidentified: int = 0  # requests refused before a client was identified
    unfinished: int = 0  # intents whose outcome is not in the log
    by_decision: dict[str, int] = {}
    bucket: str = "day"
    timeline: list[Bucket] = []
    hiring_blocked: int = 0
    neutralized: dict[str, int] = {}
    denials_by_rule: dict[str, int] = {}
    denials_by_client: dict[str, int] = {}
    denials_by_purpose: dict[str, int] = {}
    throttled_by_vendor: dict[str, int] = {}
    limit_refusals: dict[str, int] = {}
    objections: Objections = msgspec.field(default_factory=Objections)
    policy_versions: list[PolicyVersion] = []
    verification: Verification | None = None
    request_ids: dict[str, RequestIds] = {}


class _Builder:
    def __init__(self, policy: CompiledPolicy | None, id_limit: int) -> None:
        self.policy = policy
        self.id_limit = id_limit
        self.ids: dict[str, RequestIds] = {}
        self.decisions: Counter[str] = Counter()
        self.hours: dict[str, Counter[str]] = {}
        self.neutralized: Counter[str] = Counter()
        self.by_rule: Counter[str] = Counter()
        self.by_client: Counter[str] = Counter()
        self.by_purpose: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.limited: Counter[str] = Counter()
        self.versions: dict[str, PolicyVersion] = {}
        self.objections = Objections()
        self.lookups = self.people = self.hiring = self.unidentified = self.unfinished = 0
        self.first: str | None = None
        self.last: str | None = None

    def note(self, key: str, label: str, request_id: str) -> None:
        entry = self.ids.get(key)
        if entry is None:
            entry = self.ids[key] = RequestIds(label=label)
        entry.count += 1
        if len(entry.ids) < self.id_limit:
            entry.ids.append(request_id)
        else:
            entry.more += 1

    def _version(self, version: str) -> PolicyVersion:
        entry = self.versions.get(version)
        if entry is None:
            entry = self.versions[version] = PolicyVersion(version=version)
        return entry

    def add_lookup(self, lookup: Lookup) -> None:
        if not lookup.identified:
            self.unidentified += 1
            return
        rid = lookup.request_id
        self.lookups += 1
        self.people += lookup.people
        if not lookup.complete:
            self.unfinished += 1
            self.note("unfinished", "intents without an outcome", rid)
        if self.first is None or lookup.time < self.first:
            self.first = lookup.time
        if self.last is None or lookup.time > self.last:
            self.last = lookup.time
        decision = lookup.decision or "error"
        self.decisions[decision] += 1
        self.note(f"decision.{decision}", f"decision {decision}", rid)
        hour = lookup.time[:13]
        self.hours.setdefault(hour, Counter())[decision] += 1
        # Both granularities; the one the timeline does not use is dropped at the end.
        self.note(f"day.{hour[:10]}", f"lookups on {_bucket_label(hour[:10], 'day')}", rid)
        self.note(f"hour.{hour}", f"lookups in the hour {_bucket_label(hour, 'hour')}", rid)
        if lookup.policy_version:
            entry = self._version(lookup.policy_version)
            entry.lookups += 1
            if entry.first_seen is None or lookup.time < entry.first_seen:
                entry.first_seen = lookup.time
            if entry.last_seen is None or lookup.time > entry.last_seen:
                entry.last_seen = lookup.time
        if decision == "neutralize" and lookup.outcome:
            self.neutralized[lookup.outcome] += 1
            self.note(f"neutralized.{lookup.outcome}", f"neutralized, {lookup.outcome}", rid)
        if lookup.outcome == "objected":
            self.objections.lookups += 1
            self.note("objected", "objections honoured", rid)
        self.objections.people_withheld += lookup.withheld
        if lookup.outcome == "throttled":
            vendor = lookup.upstream or "?"
            self.throttled[vendor] += 1
            self.note(f"throttled.{vendor}", f"throttled by {vendor}", rid)
        if lookup.error == "limit.exceeded":
            vendor = lookup.upstream or "?"
            self.limited[vendor] += 1
            self.note(f"limited.{vendor}", f"limit refusals, {vendor}", rid)
        if decision != "deny":
            return
        if lookup.hiring:
            self.hiring += 1
            self.note("hiring", "hiring lookups blocked", rid)
        for rule in self._denying_rules(lookup):
            self.by_rule[rule] += 1
            self.note(f"rule.{rule}", f"denied by {rule}", rid)
        client = lookup.client or "?"
        self.by_client[client] += 1
        self.note(f"client.{client}", f"denials of {client}", rid)
        purpose = lookup.purpose or "(none)"
        self.by_purpose[purpose] += 1
        self.note(f"purpose.{purpose}", f"denials for {purpose}", rid)

    def _denying_rules(self, lookup: Lookup) -> list[str]:
        wanted = "limit" if lookup.error == "limit.exceeded" else "deny"
        # A rule the policy does not name (none given, or renamed since) may be the one.
        found = [r for r in lookup.rules if self._action(r) in (wanted, None)]
        if found:
            return found
        if wanted == "limit":
            return [f"terms.{lookup.upstream}.limits"]
        return [lookup.error or "policy.denied"]

    def _action(self, rule_id: str) -> str | None:
        if rule_id.startswith(("policy.", "terms.")):
            return "deny"
        if self.policy is None:
            return None
        for rule in self.policy.rules:
            if rule.id == rule_id:
                return rule.action
        return None

    def add_record(self, view: RecordView) -> None:
        kind = view.kind
        v2 = view if isinstance(view, AuditRecord) else None
        if kind == "refusal.aggregate" and v2 is not None:
            self.unidentified += v2.count or len(v2.request_ids)
        elif kind == "objection.add":
            self.objections.added += 1
        elif kind == "objection.remove":
            self.objections.removed += 1
        elif kind == "policy.load" and view.policy_version:
            # Both formats say decision loaded/rejected (format 2 adds status 422).
            ok = view.decision not in ("rejected", "refused") and view.status in (None, 200)
            self._version(view.policy_version).loads.append(
                PolicyLoad(
                    time=view.time,
                    status="ok" if ok else "refused",
                    actor=v2.actor if v2 is not None else None,
                    detail=view.detail,
                    loosening=bool(v2 is not None and v2.loosening)
                    or "LOOSENING saved outside" in (view.detail or ""),
                )
            )

    def report(
        self, *, source: str, since: str | None, until: str | None, generated: str
    ) -> Report:
        span_hours = len(self.hours)
        bucket = "hour" if span_hours and _hours_between(self.first, self.last) <= 72 else "day"
        width = 13 if bucket == "hour" else 10
        rolled: dict[str, Counter[str]] = {}
        for hour, counts in self.hours.items():
            rolled.setdefault(hour[:width], Counter()).update(counts)
        timeline = [
            Bucket(start=key, counts={d: rolled[key].get(d, 0) for d in DECISIONS})
            for key in sorted(rolled)
        ]
        versions = sorted(
            self.versions.values(),
            key=lambda v: min([ld.time for ld in v.loads] + [v.first_seen or "~"]),
        )
        return Report(
            generated=generated,
            source=source,
            since=since,
            until=until,
            first=self.first,
            last=self.last,
            lookups=self.lookups,
            people=self.people,
            refused_unidentified=self.unidentified,
            unfinished=self.unfinished,
            by_decision={d: self.decisions.get(d, 0) for d in DECISIONS}
            | {d: n for d, n in self.decisions.items() if d not in DECISIONS},
            bucket=bucket,
            timeline=timeline,
            hiring_blocked=self.hiring,
            neutralized={o: self.neutralized.get(o, 0) for o in NEUTRAL_OUTCOMES}
            | {o: n for o, n in self.neutralized.items() if o not in NEUTRAL_OUTCOMES},
            denials_by_rule=dict(self.by_rule.most_common()),
            denials_by_client=dict(self.by_client.most_common()),
            denials_by_purpose=dict(self.by_purpose.most_common()),
            throttled_by_vendor=dict(self.throttled.most_common()),
            limit_refusals=dict(self.limited.most_common()),
            objections=self.objections,
            policy_versions=versions,
            request_ids={
                key: ids
                for key, ids in sorted(self.ids.items())
                if not key.startswith("hour." if bucket == "day" else "day.")
            },
        )


def _hours_between(first: str | None, last: str | None) -> float:
    if first is None or last is None:
        return 0.0
    return (_parse(last) - _parse(first)).total_seconds() / 3600


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_report(
    events: Iterable[Lookup | tuple[int, RecordView]],
    *,
    source: str,
    since: str | None = None,
    until: str | None = None,
    policy: CompiledPolicy | None = None,
    verification: Verification | None = None,
    id_limit: int = ID_LIMIT,
    generated: str | None = None,
) -> Report:
    """Count ``events`` (from :func:`gateway.audit.lookups.iter_events`) into a report."""
    builder = _Builder(policy, id_limit)
    for event in events:
        if isinstance(event, Lookup):
            builder.add_lookup(event)
        else:
            builder.add_record(event[1])
    report = builder.report(source=source, since=since, until=until, generated=generated or _now())
    report.verification = verification
    return report


def verify_for_report(
    path: Path, public_keys: bytes | None, *, workers: int | None = None
) -> Verification:
    """Verify the export at ``path``; note its last checkpoint."""
    if public_keys is None:
        return Verification(ok=False, message="not verified: no public key was given")
    last: CheckpointInfo | None = None
    with path.open("rb") as lines:
        for line in lines:
            if line.startswith(b'{"type":"checkpoint"'):
                cp = msgspec.json.decode(line, type=CheckpointLine)
                last = CheckpointInfo(size=cp.size, time=cp.time, key_id=cp.key_id, root=cp.root)
    result = verify_export(path, public_keys, progress=False, workers=workers)
    return Verification(
        ok=result.ok,
        message=str(result),
        tree_size=result.size,
        records=result.records,
        checkpoints=result.checkpoints,
        root=result.root,
        key_ids=list(result.key_ids),
        last_checkpoint=last if result.ok else None,
    )


def report_from_export(
    path: Path,
    *,
    public_keys: bytes | None,
    since: str | None = None,
    until: str | None = None,
    policy: CompiledPolicy | None = None,
    id_limit: int = ID_LIMIT,
    source: str | None = None,
    verify_workers: int | None = None,
) -> Report:
    """Verify the export file, then count its lookups. ``verify_workers``: processes
    for the verifier (default: its own choice; a server passes 1)."""
    verification = verify_for_report(path, public_keys, workers=verify_workers)
    events = iter_events(iter_export_records(path), since=since, until=until)
    return build_report(
        events,
        source=source or f"export {path.name}",
        since=since,
        until=until,
        policy=policy,
        verification=verification,
        id_limit=id_limit,
    )


def report_from_store(
    store: AuditStore,
    keyring: KeyRing,
    *,
    since: str | None = None,
    until: str | None = None,
    policy: CompiledPolicy | None = None,
    id_limit: int = ID_LIMIT,
    temp_dir: Path | None = None,
    verify_workers: int | None = None,
) -> Report:
    """Export the window to a temporary file (signing a fresh checkpoint), verify it
    with the log's own public keys, and count it."""
    fd, name = tempfile.mkstemp(prefix="report-", suffix=".jsonl", dir=temp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            export_jsonl(store, keyring, out, since=since, until=until)
        return report_from_export(
            path,
            public_keys=keyring.public_pems(),
            since=since,
            until=until,
            policy=policy,
            id_limit=id_limit,
            source=f"audit store {store.origin}",
            verify_workers=verify_workers,
        )
    finally:
        path.unlink(missing_ok=True)


# -- HTML -----------------------------------------------------------------------------

COLOURS = {"allow": "#2e7d32", "neutralize": "#1565c0", "deny": "#c62828", "error": "#757575"}


def human_time(text: str | None) -> str:
    """``2026-12-01T19:43:23.123456Z`` → ``1 Dec 2026, 19:43:23 UTC``."""
    if not text:
        return "—"
    try:
        moment = _parse(text if len(text) > 13 else text + ":00:00Z" if len(text) == 13 else text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.day} {moment:%b %Y, %H:%M:%S} UTC"


def _bucket_label(start: str, bucket: str) -> str:
    if bucket == "hour":
        moment = datetime.fromisoformat(start + ":00:00+00:00")
        return f"{moment.day} {moment:%b} {moment:%H}:00"
    moment = datetime.fromisoformat(start + "T00:00:00+00:00")
    return f"{moment.day} {moment:%b %Y}"


def anchor(key: str) -> str:
    """The HTML id of the request-id list behind figure ``key``."""
    return "ids-" + re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _figure(report: Report, key: str, value: int) -> str:
    if key in report.request_ids and value:
        return f'<a class="fig" href="#{anchor(key)}">{value:,}</a>'
    return f"{value:,}"


def _bar_chart(report: Report, title: str, items: list[tuple[str, str, int]], colour: str) -> str:
    """Horizontal bars: (label, figure key, count)."""
    if not items:
        return f'<p class="none">{_e(title)}: none in this period.</p>'
    top = max(n for _, _, n in items) or 1
    row, label_w, bar_w = 26, 260, 420
    height = row * len(items) + 8
    parts = [
        f'<svg class="chart" role="img" aria-label="{_e(title)}" width="{label_w + bar_w + 80}" '
        f'height="{height}" viewBox="0 0 {label_w + bar_w + 80} {height}">',
        f"<title>{_e(title)}</title>",
    ]
    for i, (label, key, n) in enumerate(items):
        y = 4 + i * row
        w = max(2, round(bar_w * n / top)) if n else 0
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_e(label)}</text>'
            f'<a href="#{anchor(key)}"><rect x="{label_w}" y="{y + 3}" width="{w}" height="18" '
            f'fill="{colour}"><title>{_e(label)}: {n:,}</title></rect></a>'
            f'<text x="{label_w + w + 6}" y="{y + 17}">{n:,}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _timeline_chart(report: Report) -> str:
    buckets = report.timeline
    if not buckets:
        return '<p class="none">No lookups in this period.</p>'
    top = max(sum(b.counts.values()) for b in buckets) or 1
    plot_h, left, bottom = 220, 56, 60
    step = max(6, min(40, 900 // len(buckets)))
    width = left + step * len(buckets) + 20
    height = plot_h + bottom + 10
    parts = [
        f'<svg class="chart" id="timeline" role="img" aria-label="Lookups over time" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        "<title>Lookups over time, by decision</title>",
        f'<line x1="{left}" y1="{plot_h + 5}" x2="{width - 10}" y2="{plot_h + 5}" stroke="#999"/>',
        f'<text x="{left - 6}" y="14" text-anchor="end">{top:,}</text>',
        f'<text x="{left - 6}" y="{plot_h + 5}" text-anchor="end">0</text>',
    ]
    label_every = max(1, len(buckets) // 12)
    for i, b in enumerate(buckets):
        x = left + i * step + 1
        y = float(plot_h + 5)
        for decision in DECISIONS:
            n = b.counts.get(decision, 0)
            if not n:
                continue
            h = max(1.0, plot_h * n / top)
            y -= h
            label = _bucket_label(b.start, report.bucket)
            parts.append(
                f'<a href="#{anchor(f"{report.bucket}.{b.start}")}">'
                f'<rect x="{x}" y="{y:.1f}" width="{step - 2}" height="{h:.1f}" '
                f'fill="{COLOURS[decision]}"><title>{_e(label)}: {n:,} {decision}</title>'
                "</rect></a>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{plot_h + 20}" text-anchor="end" '
                f'transform="rotate(-40 {x + step / 2:.1f} {plot_h + 20})">'
                f"{_e(_bucket_label(b.start, report.bucket))}</text>"
            )
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="key"><i style="background:{COLOURS[d]}"></i>'
        f"{_e(d)} {_figure(report, f'decision.{d}', report.by_decision.get(d, 0))}</span>"
        for d in DECISIONS
    )
    return "".join(parts) + f'<p class="legend">{legend}</p>'


def _table(report: Report, heads: tuple[str, str], rows: dict[str, int], prefix: str) -> str:
    if not rows:
        return '<p class="none">None in this period.</p>'
    body = "".join(
        f"<tr><td>{_e(name)}</td><td class='n' data-sort='{n}'>"
        f"{_figure(report, prefix + name, n)}</td></tr>"
        for name, n in rows.items()
    )
    return (
        f'<table class="sortable"><thead><tr><th>{_e(heads[0])}</th>'
        f'<th class="n">{_e(heads[1])}</th></tr></thead><tbody>{body}</tbody></table>'
    )


def _versions_table(report: Report) -> str:
    if not report.policy_versions:
        return '<p class="none">No policy version is named in this period.</p>'
    rows = []
    for v in report.policy_versions:
        loads = (
            "<br>".join(
                f"{_e(human_time(ld.time))}: {_e(ld.status)}"
                + (f" by {_e(ld.actor)}" if ld.actor else "")
                + (
                    ' <strong class="warn">loosening saved outside apply</strong>'
                    if ld.loosening
                    else ""
                )
                + (f'<div class="detail">{_e(ld.detail)}</div>' if ld.detail else "")
                for ld in v.loads
            )
            or "loaded before this period"
        )
        rows.append(
            f"<tr><td><code>{_e(v.version)}</code></td><td>{loads}</td>"
            f"<td data-sort='{_e(v.first_seen or '')}'>{_e(human_time(v.first_seen))}</td>"
            f"<td data-sort='{_e(v.last_seen or '')}'>{_e(human_time(v.last_seen))}</td>"
            f"<td class='n' data-sort='{v.lookups}'>{v.lookups:,}</td></tr>"
        )
    return (
        '<table class="sortable"><thead><tr><th>version</th><th>loaded</th>'
        '<th>first lookup</th><th>last lookup</th><th class="n">lookups</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _verification(report: Report) -> str:
    v = report.verification
    if v is None:
        return '<p class="none">Not verified.</p>'
    status = (
        '<strong class="ok">intact</strong>' if v.ok else '<strong class="warn">FAILED</strong>'
    )
    cp = v.last_checkpoint
    checkpoint = (
        f"size {cp.size:,}, signed {_e(human_time(cp.time))} with key <code>{_e(cp.key_id)}</code>"
        if cp
        else "—"
    )
    return (
        f'<table class="facts" id="verification"><tbody>'
        f"<tr><th>result</th><td>{status}: {_e(v.message)}</td></tr>"
        f"<tr><th>tree size</th><td>{v.tree_size:,} records "
        f"({v.records:,} in this window)</td></tr>"
        f"<tr><th>last checkpoint</th><td>{checkpoint}</td></tr>"
        f"<tr><th>root</th><td><code>{_e(v.root or '—')}</code></td></tr>"
        f"<tr><th>key ids</th><td>{_e(', '.join(v.key_ids) or '—')}</td></tr>"
        "</tbody></table>"
    )


def _id_lists(report: Report) -> str:
    parts = []
    for key, entry in report.request_ids.items():
        more = f" <em>and {entry.more:,} more not listed</em>" if entry.more else ""
        parts.append(
            f'<details id="{anchor(key)}"><summary>{_e(entry.label)}: {entry.count:,} '
            f"request id{'s' if entry.count != 1 else ''}</summary>"
            f'<p class="ids">{" ".join(entry.ids)}{more}</p></details>'
        )
    return "".join(parts)


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#555}.cards{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.7em 1em;min-width:10em}
.card .v{font-size:1.7em;font-weight:600;display:block}.card .l{color:#555}
svg.chart{display:block;max-width:100%;height:auto;font-size:12px}
svg.chart text{fill:#333}table{border-collapse:collapse;margin:.5em 0}
td,th{border-bottom:1px solid #eee;padding:.3em .8em;text-align:left;vertical-align:top}
th{background:#f5f5f5}table.sortable th{cursor:pointer}
table.sortable th:after{content:" ⇅";color:#aaa}
.n{text-align:right}.none{color:#777}.ok{color:#2e7d32}.warn{color:#c62828}
.legend .key{margin-right:1.2em}
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em}
.ids{font:12px monospace;word-break:break-all}.detail{color:#555;font-size:.9em}
a.fig{font-weight:600}details{margin:.2em 0}
"""

# Sort a table by the clicked column (numbers by data-sort); open the request-id list
# a figure links to; note each chart's rendered size (data-rendered) for checks.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function(th){
 th.addEventListener("click",function(){
  var table=th.closest("table"),body=table.tBodies[0],i=th.cellIndex;
  var dir=th.dataset.dir==="asc"?"desc":"asc";th.dataset.dir=dir;
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
   var x=a.cells[i].dataset.sort||a.cells[i].textContent;
   var y=b.cells[i].dataset.sort||b.cells[i].textContent;
   var nx=parseFloat(x),ny=parseFloat(y),c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
   return dir==="asc"?c:-c;});
  rows.forEach(function(r){body.appendChild(r);});});});
function openTarget(){var t=location.hash&&document.getElementById(location.hash.slice(1));
 if(t&&t.tagName==="DETAILS"){t.open=true;}}
window.addEventListener("hashchange",openTarget);openTarget();
document.querySelectorAll("svg.chart").forEach(function(s){var r=s.getBoundingClientRect();
 s.setAttribute("data-rendered",Math.round(r.width)+"x"+Math.round(r.height));});
"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    window = (
        f"{_e(human_time(report.since)) if report.since else 'the beginning of the log'} to "
        f"{_e(human_time(report.until)) if report.until else 'now'}"
    )
    cards = [
        ("lookups", "decision", report.lookups, "lookups"),
        ("hiring lookups blocked", "hiring", report.hiring_blocked, "hiring"),
        ("denied", "decision.deny", report.by_decision.get("deny", 0), "denied"),
        ("neutral answers", "decision.neutralize", report.by_decision.get("neutralize", 0),
         "neutralized"),
        ("objections honoured", "objected", report.objections.lookups, "objected"),
    ]  # fmt: skip
    card_html = "".join(
        f'<div class="card" id="card-{slug}"><span class="v">'
        f"{_figure(report, key, n) if key != 'decision' else f'{n:,}'}</span>"
        f'<span class="l">{_e(label)}</span></div>'
        for label, key, n, slug in cards
    )
    decisions = [(d, f"decision.{d}", report.by_decision.get(d, 0)) for d in DECISIONS]
    rules = [(r, f"rule.{r}", n) for r, n in report.denials_by_rule.items()]
    neutral = [(o, f"neutralized.{o}", n) for o, n in report.neutralized.items()]
    vendor_rows = "".join(
        f"<tr><td>{_e(u)}</td>"
        f"<td class='n' data-sort='{report.throttled_by_vendor.get(u, 0)}'>"
        f"{_figure(report, f'throttled.{u}', report.throttled_by_vendor.get(u, 0))}</td>"
        f"<td class='n' data-sort='{report.limit_refusals.get(u, 0)}'>"
        f"{_figure(report, f'limited.{u}', report.limit_refusals.get(u, 0))}</td></tr>"
        for u in sorted(set(report.throttled_by_vendor) | set(report.limit_refusals))
    )
    vendors = (
        '<table class="sortable"><thead><tr><th>upstream</th><th class="n">throttled by the '
        'vendor</th><th class="n">refused by a limit</th></tr></thead>'
        f"<tbody>{vendor_rows}</tbody></table>"
        if vendor_rows
        else '<p class="none">No throttling and no limit refusals in this period.</p>'
    )
    o = report.objections
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Audit report: {window}</title><style>{_STYLE}</style></head>
<body>
<h1>Audit report</h1>
<p class="sub">Lookups from {window}. Source: {_e(report.source)}. First lookup
{_e(human_time(report.first))}, last {_e(human_time(report.last))}. Generated
{_e(human_time(report.generated))}.</p>
<p class="sub">A lookup is one request, however many records or people it has
({report.people:,} people were asked about in these lookups). Every figure links to the
request ids it counts.</p>
<div class="cards">{card_html}</div>
<h2 id="over-time">Lookups over time, per {report.bucket}</h2>
{_timeline_chart(report)}
<h2 id="decisions">Lookups by decision</h2>
{_bar_chart(report, "Lookups by decision", decisions, "#455a64")}
<h2 id="denials">Denials</h2>
<p>Hiring lookups blocked (an HR client, or a purpose under <code>employment</code>):
<strong>{_figure(report, "hiring", report.hiring_blocked)}</strong>.</p>
{_bar_chart(report, "Denials by rule", rules, COLOURS["deny"])}
<h3>By rule</h3>{_table(report, ("rule", "denials"), report.denials_by_rule, "rule.")}
<h3>By client</h3>{_table(report, ("client", "denials"), report.denials_by_client, "client.")}
<h3>By purpose</h3>{_table(report, ("purpose", "denials"), report.denials_by_purpose, "purpose.")}
<h2 id="neutralized">Neutral answers, by what the vendor said</h2>
{_bar_chart(report, "Neutral answers by outcome", neutral, COLOURS["neutralize"])}
<h2 id="vendors">Vendor throttling and limit refusals</h2>
{vendors}
<h2 id="objections">Objections honoured</h2>
<p>{_figure(report, "objected", o.lookups)} lookups about people who objected were answered
neutrally without contacting the vendor; {o.people_withheld:,} people were left out of
vendors' answers; {o.added:,} objections were added and {o.removed:,} removed.</p>
<h2 id="policy">Policy versions in force</h2>
{_versions_table(report)}
<h2 id="chain">Verification of the log</h2>
{_verification(report)}
<p>Requests refused before any client was identified (bad keys, malformed requests; not
lookups): {report.refused_unidentified:,}. Lookups whose outcome is not in the log:
{_figure(report, "unfinished", report.unfinished)}.</p>
<h2 id="request-ids">Request ids behind each figure</h2>
{_id_lists(report)}
<script>{_SCRIPT}</script>
</body></html>
"""


def render_json(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
