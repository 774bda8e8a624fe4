"""A generated month of gateway traffic, written through the real AuditLog, with the
plan kept beside it so tests count the truth independently of the readers under test.

Each planned lookup is one :class:`Planned` scenario: who asked, for what, what the
gateway decided, what the vendor said, which records the gateway writes for it
(the same shapes ``gateway/proxy.py`` writes: an intent before a vendor call, then
the outcome; a single record for denials, local answers and cache hits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.audit.log import AuditLog
from gateway.audit.people import PersonCommitter
from gateway.audit.record import AnyRecord, AuditRecord, AuditRecordV1, PersonRef
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore

BASE = 1_796_083_200  # 2026-12-01T00:00:00Z
V2_SCORE = "/v2/user.json/{kloutId}/score"
V1_BATCH = "/1/klout.json"
OLD_VERSION = "sha256:" + "a" * 16
NEW_VERSION = "sha256:" + "b" * 16


@dataclass(frozen=True, slots=True)
class Planned:
    """One lookup as the test means it (not as any reader sees it)."""

    request_id: str
    time: str
    client: str | None
    client_kind: str | None
    purpose: str | None
    upstream: str
    route: str
    decision: str
    outcome: str | None
    rules: tuple[str, ...]
    error: str | None = None
    status: int = 200
    upstream_status: int | None = None
    calls_vendor: bool = False
    people: int = 1
    unfinished: bool = False
    policy_version: str = NEW_VERSION
    detail: str | None = None
    subjects: tuple[str, ...] = field(default=())


# (weight, client, kind, purpose, route, decision, outcome, rules, error, status, calls vendor)
SCENARIOS: list[tuple[int, dict[str, object]]] = [
    (30, dict(client="crm", client_kind="crm", purpose="sales", decision="allow",
              outcome="found", rules=("limit-klout-terms",), calls_vendor=True)),
    (8, dict(client="support-desk", client_kind="support",
             purpose="essential.service.operations.support", decision="allow", outcome="found",
             rules=("limit-klout-terms", "coarsen-support-desk"), calls_vendor=True)),
    (4, dict(client="crm", client_kind="crm", purpose="sales", decision="allow",
             outcome="found", rules=("limit-klout-terms",), detail="cache hit, 12 s old")),
    (10, dict(client="crm", client_kind="crm", purpose="sales", decision="neutralize",
              outcome="missing", rules=("limit-klout-terms", "neutralize-missing"),
              calls_vendor=True)),
    (3, dict(client="support-desk", client_kind="support",
             purpose="essential.service.operations.support", decision="neutralize",
             outcome="pending", rules=("limit-klout-terms", "coarsen-support-desk",
                                       "neutralize-missing"), calls_vendor=True)),
    (3, dict(client="crm", client_kind="crm", purpose="sales", decision="neutralize",
             outcome="objected", rules=("limit-klout-terms", "neutralize-objected"))),
    (9, dict(client="ats", client_kind="hr", purpose="employment.recruitment", decision="deny",
             outcome=None, rules=("deny-employment", "deny-hr-clients", "limit-klout-terms"),
             error="policy.denied", status=403)),
    (4, dict(client="email-marketing", client_kind="marketing",
             purpose="marketing.advertising.third_party.targeted", decision="deny", outcome=None,
             rules=("deny-advertising", "limit-klout-terms", "terms.klout.banned-purpose"),
             error="policy.denied", status=403)),
    (3, dict(client="crm", client_kind="crm", purpose="employment", decision="deny",
             outcome=None, rules=("policy.purpose-not-registered",),
             error="purpose.not_registered", status=403)),
    (3, dict(client="crm", client_kind="crm", purpose="sales", decision="deny", outcome=None,
             rules=("limit-klout-terms",), error="limit.exceeded", status=429)),
    (3, dict(client="crm", client_kind="crm", purpose="sales", decision="allow",
             outcome="throttled", rules=("limit-klout-terms",), error="upstream.throttled",
             status=429, calls_vendor=True)),
    (2, dict(client="support-desk", client_kind="support",
             purpose="essential.service.operations.support", decision="allow", outcome="error",
             rules=("limit-klout-terms", "coarsen-support-desk"), error="upstream.unavailable",
             status=502, calls_vendor=True)),
    (1, dict(client="crm", client_kind="crm", purpose=None, decision="error", outcome=None,
             rules=(), error="route.unknown", status=404)),
    (2, dict(client=None, client_kind=None, purpose=None, decision="error", outcome=None,
             rules=(), error="auth.invalid_key", status=401)),
]  # fmt: skip


def plan(count: int, *, seed: int = 11, days: int = 20) -> list[Planned]:
    """``count`` lookups over ``days`` days; a few are 5-name v1 batches, a few unfinished."""
    rng = random.Random(seed)
    weights = [w for w, _ in SCENARIOS]
    step = days * 86400 / count
    planned: list[Planned] = []
    for i in range(count):
        spec = dict(rng.choices(SCENARIOS, weights)[0][1])
        t = BASE + i * step + rng.random() * step * 0.5
        batch = spec["decision"] == "allow" and spec["outcome"] == "found" and i % 17 == 0
        people = 5 if batch else 1
        unfinished = bool(spec.get("calls_vendor")) and i % 997 == 5
        planned.append(
            Planned(
                request_id=f"{i:032x}",
                time=_rfc3339(t),
                upstream="klout",
                route=V1_BATCH if batch else V2_SCORE,
                people=people,
                unfinished=unfinished,
                policy_version=OLD_VERSION if i < count // 4 else NEW_VERSION,
                subjects=tuple(f"hmac-sha256:{(i * 7 + k) % 5000:064x}" for k in range(people)),
                status=int(spec.pop("status", 200)),  # type: ignore[call-overload]
                upstream_status=200 if spec.get("calls_vendor") else None,
                **spec,  # type: ignore[arg-type]
            )
        )
    return planned


def as_logged(p: Planned) -> Planned:
    """An unfinished lookup is in the log as its intent only: allowed, no outcome yet."""
    if not p.unfinished:
        return p
    return dataclasses.replace(p, decision="allow", outcome=None, error=None)


def _rfc3339(t: float) -> str:
    import time as _time

    second = int(t)
    micros = min(999_999, round((t - second) * 1_000_000))
    return f"{_time.strftime('%Y-%m-%dT%H:%M:%S', _time.gmtime(second))}.{micros:06d}Z"


COMMITTER = PersonCommitter(bytes(range(32)))
AGGREGATE = 5  # unidentified refusals per refusal.aggregate record, in format 2


def format_1(p: Planned) -> bool:
    """The first quarter of the month was written before format 2 (old policy version)."""
    return p.policy_version == OLD_VERSION


def records_v1(p: Planned) -> Iterator[AuditRecordV1]:
    """The records a format-1 gateway wrote for ``p``: every field in both phases."""
    common = dict(
        request_id=p.request_id,
        client=p.client,
        client_kind=p.client_kind,
        purpose=p.purpose,
        upstream=p.upstream,
        route=p.route,
        subjects=list(p.subjects) if p.client else [],
        rules=list(p.rules),
        policy_version=p.policy_version,
    )
    if p.calls_vendor:
        yield AuditRecordV1(kind="lookup.intent", time=p.time, decision="allow", **common)  # type: ignore[arg-type]
        if p.unfinished:
            return
    yield AuditRecordV1(
        kind="lookup",
        time=_outcome_time(p),
        decision=p.decision,
        outcome=p.outcome,
        upstream_status=_vendor_status(p),
        status=p.status,
        latency_ms=12.5,
        error=p.error,
        detail=p.detail,
        **common,  # type: ignore[arg-type]
    )


def _outcome_time(p: Planned) -> str:
    return p.time[:-2] + "9Z" if p.calls_vendor else p.time


def _vendor_status(p: Planned) -> int | None:
    return {"throttled": 429, "error": 502}.get(p.outcome or "", p.upstream_status)


def records_v2(p: Planned) -> Iterator[AuditRecord]:
    """The records the gateway writes today (format 2, as gateway/proxy.py does): the
    intent holds what is known before the call, the outcome only what the call added."""
    subjects = list(p.subjects) if p.client else []

    def people(outcome: str | None) -> list[PersonRef]:
        return COMMITTER.refs(p.request_id, ((s, "asked", outcome) for s in subjects))

    intent_fields = dict(
        client=p.client,
        client_kind=p.client_kind,
        purpose=p.purpose,
        upstream=p.upstream,
        route=p.route,
        rules=list(p.rules),
        policy_version=p.policy_version,
    )
    outcome_fields = dict(
        outcome=p.outcome,
        upstream_status=_vendor_status(p),
        status=p.status,
        latency_ms=12.5,
        error=p.error,
        detail=p.detail,
    )
    if p.calls_vendor:
        yield AuditRecord(kind="lookup.intent", time=p.time, request_id=p.request_id,
                          people=people(None), decision="allow", **intent_fields)  # type: ignore[arg-type]  # fmt: skip
        if p.unfinished:
            return
        yield AuditRecord(kind="lookup", time=_outcome_time(p), request_id=p.request_id,
                          people=people(p.outcome), decision=p.decision, **outcome_fields)  # type: ignore[arg-type]  # fmt: skip
        return
    yield AuditRecord(kind="lookup", time=p.time, request_id=p.request_id,
                      people=people(p.outcome), decision=p.decision,
                      **intent_fields, **outcome_fields)  # type: ignore[arg-type]  # fmt: skip


def aggregates(planned: list[Planned]) -> Iterator[AuditRecord]:
    """Format-2 refusals before any client was identified: one record per few."""
    refused = [p for p in planned if p.client is None and not format_1(p)]
    for first in range(0, len(refused), AGGREGATE):
        group = refused[first : first + AGGREGATE]
        yield AuditRecord(
            kind="refusal.aggregate",
            time=group[0].time,
            request_id=group[0].request_id,
            source="hmac-sha256:" + "5" * 64,
            error="auth.invalid_key",
            status=401,
            count=len(group),
            request_ids=[p.request_id for p in group],
            until=group[-1].time,
        )


OBJECTIONS = 3


def objections() -> list[AuditRecord]:
    """A few objections recorded by staff (format 2)."""
    return [
        AuditRecord(kind="objection.add", time=_rfc3339(BASE + 7 * 86400 + i * 3600),
                    request_id=f"obj{i:029x}", actor="cli:dana", role="policy",
                    people=COMMITTER.refs(f"obj{i:029x}", [(f"hmac-sha256:{i:064x}", "asked",
                                                            "objected")]), count=1)
        for i in range(OBJECTIONS)
    ]  # fmt: skip


def all_records(planned: list[Planned]) -> list[AnyRecord]:
    """Every record of the month, in time order."""
    out: list[AnyRecord] = [*policy_loads(), *objections(), *aggregates(planned)]
    for p in planned:
        if format_1(p):
            out.extend(records_v1(p))
        elif p.client is not None:
            out.extend(records_v2(p))
    out.sort(key=lambda r: r.time)
    return out


def policy_loads() -> list[AnyRecord]:
    return [
        AuditRecordV1(kind="policy.load", time=_rfc3339(BASE - 60), request_id="load-1",
                      decision="loaded", policy_version=OLD_VERSION, detail="digest 1"),
        AuditRecord(kind="policy.load", time=_rfc3339(BASE + 5 * 86400), request_id="2" * 32,
                    decision="loaded", policy_version=NEW_VERSION, actor="cli:dana",
                    detail="applied by cli:dana; rule added: x"),
    ]  # fmt: skip


async def write_traffic(log: AuditLog, planned: list[Planned], *, per_round: int = 2048) -> int:
    """Append every record of the month through ``log``, in time order, each with the
    pseudonyms it concerns for the subject index; return the number of records."""
    records = all_records(planned)
    subjects = {p.request_id: list(p.subjects) for p in planned if p.client is not None}
    for first in range(0, len(records), per_round):
        await asyncio.gather(
            *(log.append(r, subjects.get(r.request_id, []) if isinstance(r, AuditRecord) else ())
              for r in records[first : first + per_round])
        )  # fmt: skip
    return len(records)


def build_log(data_dir: Path, planned: list[Planned]) -> int:
    """A store in ``data_dir`` holding ``planned``, through the real AuditLog; records."""
    keyring = KeyRing.load_or_create(data_dir)
    store = AuditStore.open(data_dir=data_dir)
    try:
        return fill_store(store, keyring, planned)
    finally:
        store.close()


def fill_store(store: AuditStore, keyring: KeyRing, planned: list[Planned]) -> int:
    """Write ``planned`` into ``store`` (SQLite or PostgreSQL) through the real AuditLog."""

    async def run() -> int:
        log = AuditLog(store, keyring)
        await log.start()
        try:
            return await write_traffic(log, planned)
        finally:
            await log.close()

    return asyncio.run(run())
