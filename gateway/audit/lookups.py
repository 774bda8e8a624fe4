"""Lookups, not records: join an audit log's records into one row per request.

A lookup that contacted a vendor writes two records (``lookup.intent`` before the
call, ``lookup`` after); every other lookup writes one. Counting lines therefore
overcounts, and a format-2 outcome record does not even repeat its intent's
client or purpose (docs/decisions/0001-audit-record-format.md, section 3). Every
reader that answers "how many lookups" goes through :func:`iter_events`, which
joins an outcome to its intent by ``request_id`` and yields one :class:`Lookup`
per request, whatever the number of records or of people in it.

Both record formats are read: format 1 (no ``v``; ``subjects`` pseudonyms) and
format 2 (``"v":2`` first; ``people`` commitments; ``refusal.aggregate``,
``objection.*``, ``admin.*``). Records that are not lookups are yielded as they
are (:class:`RecordView`), in log order, for the report to count.

Memory: only intents still waiting for their outcome are held, and an outcome
follows its intent within one request's latency, so the set stays small however
long the log. Sources read in chunks (the store) or line by line (an export).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from gateway.audit.record import AnyRecord, AuditRecord, AuditRecordV1, PersonRef, decode_record
from gateway.audit.store import AuditStore

__all__ = [
    "Lookup",
    "RecordView",
    "iter_events",
    "iter_export_records",
    "iter_store_records",
    "people_of",
    "read_record",
    "subjects_of",
]


RecordView = AnyRecord
"""A decoded record of either format (:func:`gateway.audit.record.decode_record`)."""


def read_record(body: bytes) -> AnyRecord:
    """One record's canonical bytes, decoded by the log's own decoder (format 1 or 2)."""
    return decode_record(body)


def people_of(record: AnyRecord) -> list[PersonRef]:
    """The people a format-2 record names (commitments); none for format 1."""
    return record.people if isinstance(record, AuditRecord) else []


def subjects_of(record: AnyRecord) -> list[str]:
    """The pseudonyms a format-1 record names; none for format 2."""
    return record.subjects if isinstance(record, AuditRecordV1) else []


@dataclass(slots=True)
class Lookup:
    """One request as the log tells it: intent and outcome joined.

    ``complete`` is false for an intent whose outcome is not (yet) in the log: the
    gateway stopped between the two, or the window ends between them.
    """

    request_id: str
    time: str
    seq: int
    client: str | None = None
    client_kind: str | None = None
    purpose: str | None = None
    upstream: str | None = None
    route: str | None = None
    decision: str | None = None
    rules: tuple[str, ...] = ()
    policy_version: str | None = None
    outcome: str | None = None
    upstream_status: int | None = None
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    detail: str | None = None
    people: int = 0  # distinct people asked about (format 2) or subject pseudonyms (format 1)
    withheld: int = 0  # people removed from the answer because they objected (format 2)
    called_upstream: bool = False  # an intent was written: the vendor was contacted
    complete: bool = True

    @property
    def identified(self) -> bool:
        """A client was identified: a lookup. Refusals before that are not about anyone."""
        return self.client is not None

    @property
    def hiring(self) -> bool:
        """Employment by meaning: an HR client, or a purpose under ``employment``."""
        purpose = self.purpose or ""
        return (
            self.client_kind == "hr" or purpose == "employment" or purpose.startswith("employment.")
        )


def _people_count(view: RecordView) -> int:
    people = people_of(view)
    if people:
        return sum(1 for p in people if p.r == "asked")
    return len(subjects_of(view))


def _start(seq: int, view: RecordView, *, complete: bool) -> Lookup:
    lookup = Lookup(
        request_id=view.request_id or "",
        time=view.time,
        seq=seq,
        client=view.client,
        client_kind=view.client_kind,
        purpose=view.purpose,
        upstream=view.upstream,
        route=view.route,
        decision=view.decision,
        rules=tuple(view.rules),
        policy_version=view.policy_version,
        people=_people_count(view),
        called_upstream=view.kind == "lookup.intent",
        complete=complete,
    )
    _finish(lookup, view)
    return lookup


def _finish(lookup: Lookup, view: RecordView) -> None:
    """Fold an outcome record into its lookup: what it says wins, rules add up."""
    for name in ("client", "client_kind", "purpose", "upstream", "route", "policy_version"):
        value = getattr(view, name)
        if value is not None:
            setattr(lookup, name, value)
    if view.decision is not None:
        lookup.decision = view.decision
    if view.rules:
        lookup.rules = tuple(dict.fromkeys((*lookup.rules, *view.rules)))
    if view.kind == "lookup":
        lookup.outcome = view.outcome
        lookup.upstream_status = view.upstream_status
        lookup.status = view.status
        lookup.latency_ms = view.latency_ms
        lookup.error = view.error
        lookup.detail = view.detail
        lookup.complete = True
    people = people_of(view)
    if people:
        asked = sum(1 for p in people if p.r == "asked")
        lookup.people = max(lookup.people, asked)
        lookup.withheld += sum(1 for p in people if p.r == "withheld")
    elif subjects_of(view):
        lookup.people = max(lookup.people, len(subjects_of(view)))


def iter_events(
    records: Iterable[tuple[int, bytes]],
    *,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[Lookup | tuple[int, RecordView]]:
    """Lookups (joined) and other records (``(seq, view)``) of ``records``, in log order
    of their completion. ``since``/``until`` (RFC 3339, as the records write times)
    select by the time a lookup started; an outcome recorded after ``until`` still
    completes an intent inside the window.
    """
    pending: dict[str, Lookup] = {}
    for seq, body in records:
        view = read_record(body)
        kind = view.kind
        if kind == "lookup.intent":
            if (since is not None and view.time < since) or (
                until is not None and view.time >= until
            ):
                continue
            pending[view.request_id or ""] = _start(seq, view, complete=False)
            continue
        if kind == "lookup":
            waiting = pending.pop(view.request_id or "", None)
            if waiting is not None:
                _finish(waiting, view)
                yield waiting
                continue
            if (since is not None and view.time < since) or (
                until is not None and view.time >= until
            ):
                continue
            if isinstance(view, AuditRecord) and view.client is None and since is not None:
                # A format-2 outcome whose intent lies before the window: it repeats
                # none of its intent, and the lookup started outside the window.
                # (Format 2 writes refusals before identification as aggregates.)
                continue
            yield _start(seq, view, complete=True)
            continue
        if (since is not None and view.time < since) or (until is not None and view.time >= until):
            continue
        yield seq, view
    # Intents the log never closed: the gateway stopped between call and answer.
    yield from pending.values()


def iter_store_records(store: AuditStore) -> Iterator[tuple[int, bytes]]:
    """Every committed record of ``store`` as ``(seq, canonical bytes)``, in chunks."""
    for row in store.iter_records(0, store.head().size):
        yield row.seq, row.body


class _RecordLine(msgspec.Struct, frozen=True):
    type: str
    seq: int = -1
    record: msgspec.Raw = msgspec.Raw(b"null")


_line_decoder = msgspec.json.Decoder(_RecordLine)


def iter_export_records(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """The record lines of a JSONL export as ``(seq, canonical bytes)``, line by line.

    This reads, it does not verify: run :func:`gateway.audit.verify.verify_export`
    on the same file for that (the report does both).
    """
    with Path(path).open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.startswith(b'{"type":"record"'):
                continue
            try:
                parsed = _line_decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ValueError(f"{path}: line {number} is not a record line: {exc}") from None
            yield parsed.seq, bytes(parsed.record)
