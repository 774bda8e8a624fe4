"""Terms attestations: evidence for a vendor that its API was used within its terms.

For one upstream and one period, an attestation states, from the audit log:

- the lookups by purpose (counts of requests, not of records or people);
- every refusal of a lookup under a purpose the vendor's terms ban (request id,
  time, client, purpose, rule): proof that banned uses were asked for and stopped;
- ``banned_calls``: lookups under a banned purpose that still reached the vendor
  (zero when the gateway did its job);
- the peak calls to the vendor per second and per calendar day (UTC), beside the
  limits of the terms, and whether everything stayed within them.

No person appears: no identifier, no pseudonym, no commitment; request ids are
random to everyone without the gateway's key (docs/decisions/0001, section 2).

It is **bound to a checkpoint**: the figures count exactly the records
``seq < checkpoint.size`` of the log, and the signed checkpoint (origin, size,
root) is part of the attestation, so an auditor holding an export can check that
the attestation speaks of the same log. It is **signed** with the log's key:
Ed25519 over ``score-gateway-terms-attestation/1\\n`` followed by the canonical
encoding (msgspec, fields in declaration order) of the attestation with an empty
``signature``. The file is that canonical encoding plus ``\\n``, so one changed
byte anywhere fails :func:`verify_attestation`, which needs only the public keys.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.checkpoint import Checkpoint, b64, strict_b64decode
from gateway.audit.export import fresh_checkpoint
from gateway.audit.lookups import Lookup, iter_events
from gateway.audit.record import rfc3339
from gateway.audit.signing import KeyRing, load_public_keys, verify_signature
from gateway.audit.store import AuditStore
from gateway.policies.compile import CompiledPolicy, purpose_ancestors

__all__ = [
    "FORMAT",
    "Attestation",
    "AttestationCheck",
    "attest",
    "attest_store",
    "encode_attestation",
    "verify_attestation",
]

FORMAT = "score-gateway-terms-attestation/1"
_DOMAIN = FORMAT.encode() + b"\n"
_encoder = msgspec.json.Encoder(order="deterministic")


class TermsInForce(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    calls_per_second: float | None
    calls_per_day: int | None
    max_cache_age: str | None
    banned_purposes: list[str]
    source: str | None


class BannedRefusal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    request_id: str
    time: str
    client: str
    purpose: str
    rule: str


class Peak(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    calls: int
    at: str | None  # the second (YYYY-MM-DDTHH:MM:SS) or day (YYYY-MM-DD), UTC
    limit: int | float | None  # as the terms write it
    within: bool


class Attestation(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: str
    origin: str
    upstream: str
    vendor: str | None
    since: str | None
    until: str | None
    generated: str
    policy_version: str
    terms: TermsInForce
    lookups: int
    vendor_calls: int
    lookups_by_purpose: dict[str, int]
    refusals_under_banned_purposes: list[BannedRefusal]
    banned_calls: int
    peak_per_second: Peak
    peak_per_day: Peak
    within_terms: bool
    checkpoint: Checkpoint
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The exact bytes that are signed."""
        return _DOMAIN + _encoder.encode(msgspec.structs.replace(self, signature=""))


def encode_attestation(attestation: Attestation) -> bytes:
    """The file: the canonical encoding and a newline."""
    return _encoder.encode(attestation) + b"\n"


def _banned(purpose: str, banned: list[str]) -> bool:
    return any(a in banned for a in purpose_ancestors(purpose))


@dataclass(slots=True)
class _Peaks:
    """Calls per second and per day; seconds are dropped once well behind the log."""

    seconds: Counter[str]
    days: Counter[str]
    best_second: tuple[int, str | None] = (0, None)

    def add(self, moment: str) -> None:
        second = moment[:19]
        self.seconds[second] += 1
        self.days[moment[:10]] += 1
        count = self.seconds[second]
        if count > self.best_second[0]:
            self.best_second = (count, second)
        if len(self.seconds) > 4096:
            # Records come in log order, which is time order give or take a moment
            # (replicas, group commit): a second a minute behind the newest is complete.
            newest = datetime.fromisoformat(max(self.seconds) + "+00:00")
            cutoff = (newest - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
            for key in [k for k in self.seconds if k < cutoff]:
                del self.seconds[key]


def attest(
    records: Iterable[tuple[int, bytes]],
    *,
    upstream: str,
    policy: CompiledPolicy,
    checkpoint: Checkpoint,
    keyring: KeyRing,
    since: str | None = None,
    until: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Attestation:
    """Count ``records`` (which must be exactly those the checkpoint covers) and sign."""
    config = policy.upstreams.get(upstream)
    if config is None:
        raise ValueError(f"no upstream {upstream!r} in the policy {policy.path}")
    terms = config.terms
    banned = list(terms.banned_purposes)
    by_purpose: Counter[str] = Counter()
    refusals: list[BannedRefusal] = []
    peaks = _Peaks(Counter(), Counter())
    lookups = calls = banned_calls = 0
    for event in iter_events(records, since=since, until=until):
        if not isinstance(event, Lookup) or event.upstream != upstream or not event.identified:
            continue
        lookups += 1
        purpose = event.purpose or "(not declared)"
        by_purpose[purpose] += 1
        under_ban = event.purpose is not None and _banned(event.purpose, banned)
        if event.called_upstream:
            calls += 1
            peaks.add(event.time)
            banned_calls += under_ban
        elif under_ban and event.decision == "deny":
            rule = next(
                (r for r in event.rules if r.startswith("terms.")),
                next(iter(event.rules), event.error or "policy.denied"),
            )
            refusals.append(
                BannedRefusal(
                    request_id=event.request_id,
                    time=event.time,
                    client=event.client or "?",
                    purpose=purpose,
                    rule=rule,
                )
            )
    best_day = max(peaks.days.items(), key=lambda kv: (kv[1], kv[0]), default=("", 0))
    per_second = Peak(
        calls=peaks.best_second[0],
        at=peaks.best_second[1],
        limit=terms.calls_per_second,
        within=terms.calls_per_second is None or peaks.best_second[0] <= terms.calls_per_second,
    )
    per_day = Peak(
        calls=best_day[1],
        at=best_day[0] or None,
        limit=terms.calls_per_day,
        within=terms.calls_per_day is None or best_day[1] <= terms.calls_per_day,
    )
    refusals.sort(key=lambda r: (r.time, r.request_id))
    unsigned = Attestation(
        format=FORMAT,
        origin=checkpoint.origin,
        upstream=upstream,
        vendor=config.vendor,
        since=since,
        until=until,
        generated=rfc3339(clock()),
        policy_version=policy.version,
        terms=TermsInForce(
            calls_per_second=terms.calls_per_second,
            calls_per_day=terms.calls_per_day,
            max_cache_age=terms.max_cache_age,
            banned_purposes=banned,
            source=terms.source,
        ),
        lookups=lookups,
        vendor_calls=calls,
        lookups_by_purpose=dict(sorted(by_purpose.items())),
        refusals_under_banned_purposes=refusals,
        banned_calls=banned_calls,
        peak_per_second=per_second,
        peak_per_day=per_day,
        within_terms=per_second.within and per_day.within and banned_calls == 0,
        checkpoint=checkpoint,
        key_id=keyring.key_id,
        signature="",
    )
    return msgspec.structs.replace(unsigned, signature=b64(keyring.sign(unsigned.message())))


def attest_store(
    store: AuditStore,
    keyring: KeyRing,
    *,
    upstream: str,
    policy: CompiledPolicy,
    since: str | None = None,
    until: str | None = None,
) -> Attestation:
    """Sign (or reuse) a checkpoint of the log's head, then attest exactly its records."""
    checkpoint = fresh_checkpoint(store, keyring)
    rows = ((row.seq, row.body) for row in store.iter_records(0, checkpoint.size))
    return attest(
        rows,
        upstream=upstream,
        policy=policy,
        checkpoint=checkpoint,
        keyring=keyring,
        since=since,
        until=until,
    )


@dataclass(frozen=True, slots=True)
class AttestationCheck:
    ok: bool
    code: str | None = None
    message: str = ""
    attestation: Attestation | None = None

    def __str__(self) -> str:
        if not self.ok:
            return f"FAIL: {self.code}: {self.message}"
        a = self.attestation
        assert a is not None
        return (
            f"OK: attestation of {a.upstream} ({a.lookups:,} lookups, {a.vendor_calls:,} vendor "
            f"calls, within terms: {'yes' if a.within_terms else 'NO'}), bound to checkpoint "
            f"size {a.checkpoint.size} root {a.checkpoint.root}, signed by key {a.key_id}"
        )


def verify_attestation(
    data: bytes, public_keys: Mapping[str, Ed25519PublicKey] | bytes
) -> AttestationCheck:
    """Check an attestation file offline, one step per property, first failure wins."""
    keys = load_public_keys(public_keys) if isinstance(public_keys, bytes) else public_keys
    try:
        attestation = msgspec.json.decode(data, type=Attestation)
    except msgspec.DecodeError as exc:
        return AttestationCheck(False, "malformed", f"not an attestation: {exc}")
    if attestation.format != FORMAT:
        return AttestationCheck(False, "malformed", f"unknown format {attestation.format!r}")
    if encode_attestation(attestation) != data:
        return AttestationCheck(
            False, "non_canonical", "the bytes are not the canonical encoding of their content"
        )
    checkpoint = attestation.checkpoint
    if checkpoint.origin != attestation.origin:
        return AttestationCheck(False, "origin_mismatch", "the checkpoint is of another log")
    checkpoint_key = keys.get(checkpoint.key_id)
    if checkpoint_key is None:
        return AttestationCheck(
            False, "unknown_key", f"checkpoint key {checkpoint.key_id} is not among the keys"
        )
    if not checkpoint.verify(checkpoint_key):
        return AttestationCheck(False, "bad_checkpoint", "the checkpoint's signature fails")
    key = keys.get(attestation.key_id)
    if key is None:
        return AttestationCheck(
            False, "unknown_key", f"attestation key {attestation.key_id} is not among the keys"
        )
    signature = strict_b64decode(attestation.signature)
    if signature is None or not verify_signature(key, signature, attestation.message()):
        return AttestationCheck(False, "bad_signature", "the attestation's signature fails")
    return AttestationCheck(True, attestation=attestation)
