"""The audit record: one per lookup phase, per policy load, per key event.

Records hold no score and no raw personal data: subjects appear only as keyed
HMAC pseudonyms. They are encoded canonically (msgspec, fields in declaration
order, no whitespace), and those exact bytes are what the log hashes and what an
export carries, so a verifier can insist that ``encode(decode(line)) == line``.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec

RecordKind = Literal["lookup.intent", "lookup", "policy.load", "key.rotate", "gateway.start"]


class AuditRecordV1(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A record of format 1 (before 2026-12). Still read and verified, never written.

    Every field is encoded, defaults included; subjects appear as keyed HMAC
    pseudonyms in clear. ``docs/decisions/0001-audit-record-format.md`` says why
    format 2 replaced it.
    """

    kind: RecordKind
    time: str  # RFC 3339, UTC, microseconds: 2026-11-25T18:16:22.123456Z
    request_id: str
    client: str | None = None
    client_kind: str | None = None
    purpose: str | None = None
    upstream: str | None = None
    route: str | None = None
    subjects: list[str] = []  # keyed HMAC pseudonyms, never raw identifiers
    decision: str | None = None  # allow | deny | neutralize | error
    rules: list[str] = []
    policy_version: str | None = None
    outcome: str | None = None  # found | missing | pending | throttled | error | objected | cached
    upstream_status: int | None = None
    status: int | None = None  # status returned to the caller
    latency_ms: float | None = None
    error: str | None = None  # stable error code, when the lookup failed
    detail: str | None = None  # non-personal detail (policy load: file digest, errors)


PersonRole = Literal["asked", "disclosed", "withheld"]


class PersonRef(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    """One person a record concerns, as a salted commitment (``gateway.audit.people``).

    ``c`` hides the person's pseudonym from everyone without the salt, so one
    person's subject report can carry whole records without exposing the others.
    """

    c: str  # 32 hex digits: SHA-256("gw-person-v2" 0 salt 0 pseudonym)[:16]
    r: PersonRole = "asked"
    o: str | None = None  # found | missing | pending | objected


class AuditRecord(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
    tag_field="v",
    tag=2,
):
    """One audited event, format 2: what the gateway writes.

    ``lookup.intent`` is committed before the upstream is contacted (no log, no
    lookup) and holds only what is known then; the ``lookup`` record that follows
    it holds the outcome and refers to the intent by ``request_id``. A lookup that
    never contacts a vendor (denied, answered locally, a cache hit) has only a
    ``lookup`` record, with every field. Fields at their default are not encoded,
    so a record carries what it knows. The format tag ``"v":2`` is always encoded
    first: readers dispatch on it.
    The kinds and fields are set out in docs/decisions/0001-audit-record-format.md.
    """

    kind: str
    time: str  # RFC 3339, UTC, microseconds: 2026-11-25T18:16:22.123456Z
    request_id: str
    client: str | None = None
    client_kind: str | None = None
    purpose: str | None = None
    upstream: str | None = None
    route: str | None = None
    people: list[PersonRef] = []
    decision: str | None = None  # allow | deny | neutralize | error
    rules: list[str] = []
    policy_version: str | None = None
    outcome: str | None = None  # found | missing | pending | throttled | error | objected | cached
    upstream_status: int | None = None
    status: int | None = None  # status returned to the caller
    latency_ms: float | None = None
    error: str | None = None  # stable error code, when the lookup failed
    detail: str | None = None  # non-personal detail (policy load: digest, diff, errors)
    actor: str | None = None  # admin token id, or cli:NAME, for acts of people
    role: str | None = None  # the actor's admin role
    source: str | None = None  # keyed pseudonym of a peer address (refusal.aggregate)
    count: int | None = None  # refusals in an aggregate; identifiers linked by an objection
    request_ids: list[str] = []  # the refused requests of an aggregate
    until: str | None = None  # end of an aggregate's interval, RFC 3339
    loosening: bool | None = None  # policy.load: the change gives callers more than before


AnyRecord = AuditRecord | AuditRecordV1
"""A record of any format the log may hold."""

FORMAT_2_PREFIX = b'{"v":2,'

_encoder = msgspec.json.Encoder(order="deterministic")
_decoder_v2 = msgspec.json.Decoder(AuditRecord)
_decoder_v1 = msgspec.json.Decoder(AuditRecordV1)


def canonical_bytes(record: AnyRecord) -> bytes:
    """The one encoding that is hashed, stored and exported."""
    return _encoder.encode(record)


def decode_record(data: bytes) -> AnyRecord:
    """Decode a record of any format; the first key tells which."""
    if data.startswith(FORMAT_2_PREFIX):
        return _decoder_v2.decode(data)
    return _decoder_v1.decode(data)


def record_subjects(record: AnyRecord) -> list[str]:
    """Pseudonyms a format-1 record names in clear; format 2 names none (commitments)."""
    return record.subjects if isinstance(record, AuditRecordV1) else []


class _Rfc3339:
    """``2026-11-25T18:16:22.123456Z`` for a Unix time, the one time format of the
    log. The date part is formatted once per second: a datetime per record cost ~4%
    of the event loop (bench/README.md). The memo is one tuple, replaced in a single
    assignment, so the writer thread and the event loop can share it."""

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: tuple[int, str] = (-1, "")

    def __call__(self, t: float) -> str:
        second = int(t)
        memo = self._memo
        if memo[0] != second:
            memo = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._memo = memo
        micros = min(999_999, round((t - second) * 1_000_000))
        return f"{memo[1]}.{micros:06d}Z"


rfc3339 = _Rfc3339()


_OUTCOME_FIELDS = (
    "time", "people", "decision", "outcome", "upstream_status", "status", "latency_ms",
    "error", "detail",
)  # fmt: skip


def joined_lookup(intent: AuditRecord, outcome: AuditRecord) -> AuditRecord:
    """One lookup's intent and outcome as one ``lookup`` record with every field.

    A format-2 outcome after an intent holds only what the call added (§3 of the
    record-format decision); readers that want the whole lookup join the two by
    ``request_id``. Fields the outcome carries win; the intent supplies the rest.
    """
    changes: dict[str, object] = {"kind": "lookup"}
    for name in _OUTCOME_FIELDS:
        value = getattr(outcome, name)
        if value is not None and value != []:
            changes[name] = value
    return msgspec.structs.replace(intent, **changes)
