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


class AuditRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One audited event.

    ``lookup.intent`` is committed before the upstream is contacted (no log, no
    lookup); ``lookup`` is committed with the outcome before the caller is answered.
    A denied or locally answered lookup has only the ``lookup`` record.
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


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(AuditRecord)


def canonical_bytes(record: AuditRecord) -> bytes:
    """The one encoding that is hashed, stored and exported."""
    return _encoder.encode(record)


def decode_record(data: bytes) -> AuditRecord:
    return _decoder.decode(data)


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
