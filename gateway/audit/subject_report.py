"""Subject reports: one person's records, each with an RFC 6962 inclusion proof.

``gateway audit subject ... --out REPORT`` writes ``REPORT`` (JSON, checked offline
by ``gateway audit verify-subject``) and ``REPORT.html`` (for the person to read).
The JSON holds:

* ``checkpoint``: a C2SP checkpoint note signed by the log (and cosigned by its
  witnesses when the newest witnessed checkpoint covers every record);
* ``pseudonyms``: the person's own keyed pseudonyms (of every identifier given);
* ``records``: for each record, its ``seq``, its exact bytes (``leaf``), its
  RFC 6962 audit path to the checkpoint (``proof``: sibling hashes only) and
  ``matches``: where the person sits in it. For a format-2 record that is
  ``(position, pseudonym, salt)``, and the verifier recomputes the commitment
  ``people[position].c``; the other people in that record stay commitments whose
  salts the report does not give. A format-2 lookup outcome that names no one is
  included as ``why: "outcome"`` of an intent in the report (same request id);
* ``omitted_v1``: format-1 records about the person left out because they name
  someone else's pseudonym in clear (format 1 had no commitments), counted so
  the person knows they exist and can ask for them to be redacted by hand;
* ``seal``: the log key's Ed25519 signature over the canonical report with an
  empty seal, so a change of any byte anywhere fails verification, not only a
  change to a proven record.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.checkpoint import (
    Checkpoint,
    b64,
    checkpoint_from_note,
    checkpoint_note,
    strict_b64decode,
)
from gateway.audit.export import fresh_checkpoint
from gateway.audit.merkle import leaf_hash, root_from_inclusion_proof
from gateway.audit.note import NoteError, WitnessKey
from gateway.audit.people import PersonCommitter, commitment
from gateway.audit.proofs import inclusion
from gateway.audit.record import AuditRecord, AuditRecordV1, canonical_bytes, decode_record, rfc3339
from gateway.audit.signing import KeyRing, fingerprint, verify_signature
from gateway.audit.store import AuditStore

FORMAT = "score-gateway-subject-report/1"
#: How far after an intent its outcome record is looked for (it follows within moments).
OUTCOME_WINDOW = 10_000


class Match(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    position: int
    pseudonym: str
    salt: str  # hex; empty for format-1 records (pseudonyms in clear)


class ReportRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    seq: int
    leaf: str  # the record's canonical bytes, exactly as hashed
    proof: list[str]  # base64 sibling hashes, RFC 6962 PATH order
    why: str  # "names" (the person is in it) or "outcome" (of an intent that names them)
    matches: list[Match]


class SubjectReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: str
    origin: str
    upstream: str
    generated: str
    checkpoint: str  # C2SP signed note
    pseudonyms: list[str]
    records: list[ReportRecord]
    omitted_v1: int
    key_id: str
    seal: str  # base64 Ed25519 over the canonical report with seal=""

    def signed_bytes(self) -> bytes:
        return _encoder.encode(msgspec.structs.replace(self, seal=""))


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(SubjectReport)


def build_report(
    store: AuditStore,
    keyring: KeyRing,
    committer: PersonCommitter,
    pseudonyms: Sequence[str],
    upstream: str,
    *,
    clock: Callable[[], float] = time.time,
) -> SubjectReport:
    """The report for the person holding ``pseudonyms`` (every identifier's)."""
    wanted = list(dict.fromkeys(pseudonyms))
    own = set(wanted)
    found: dict[int, tuple[bytes, str, list[Match]]] = {}
    intents: dict[str, int] = {}
    omitted_v1 = 0
    for row in store.subject_records(wanted):
        if not row.body:
            continue  # pruned by retention
        record = decode_record(row.body)
        matches = [
            Match(position=m.position, pseudonym=m.pseudonym, salt=m.salt.hex())
            for m in committer.find(record, wanted)
        ]
        if not matches:
            continue  # a subject-index tag collision
        if record.upstream is not None and record.upstream != upstream:
            continue
        if isinstance(record, AuditRecordV1) and not own.issuperset(record.subjects):
            omitted_v1 += 1  # it would show another person's pseudonym in clear
            continue
        found[row.seq] = (row.body, "names", matches)
        if record.kind == "lookup.intent":
            intents[record.request_id] = row.seq
    for seq, body in _outcomes(store, intents):
        found.setdefault(seq, (body, "outcome", []))
    checkpoint = _checkpoint(store, keyring, max(found, default=-1), clock)
    proofs = inclusion(store, found, checkpoint.size)
    public_key = keyring.public_keys[checkpoint.key_id]
    cosignatures = store.cosignatures(checkpoint.size, checkpoint.size).get(checkpoint.size, [])
    records = [
        ReportRecord(
            seq=seq,
            leaf=body.decode(),
            proof=[b64(h) for h in proofs[seq]],
            why=why,
            matches=matches,
        )
        for seq, (body, why, matches) in sorted(found.items())
    ]
    unsigned = SubjectReport(
        format=FORMAT,
        origin=checkpoint.origin,
        upstream=upstream,
        generated=rfc3339(clock()),
        checkpoint=checkpoint_note(checkpoint, public_key, cosignatures).decode(),
        pseudonyms=wanted,
        records=records,
        omitted_v1=omitted_v1,
        key_id=keyring.key_id,
        seal="",
    )
    return msgspec.structs.replace(unsigned, seal=b64(keyring.sign(unsigned.signed_bytes())))


def _outcomes(store: AuditStore, intents: dict[str, int]) -> Iterable[tuple[int, bytes]]:
    """The outcome record of each intent: the ``lookup`` with its request id after it."""
    size = store.head().size
    for request_id, seq in intents.items():
        for row in store.iter_records(seq + 1, min(size, seq + OUTCOME_WINDOW), chunk=256):
            if f'"request_id":"{request_id}"'.encode() not in row.body:
                continue
            record = decode_record(row.body)
            if record.kind == "lookup" and record.request_id == request_id:
                yield row.seq, row.body
                break


def _checkpoint(
    store: AuditStore, keyring: KeyRing, last_seq: int, clock: Callable[[], float]
) -> Checkpoint:
    """The newest witnessed checkpoint if it covers every record, else a fresh one."""
    witnessed = store.latest_cosigned_checkpoint()
    if (
        witnessed is not None
        and witnessed.size > last_seq
        and witnessed.key_id in (keyring.public_keys)
    ):
        return witnessed
    return fresh_checkpoint(store, keyring, clock=clock)


def encode_report(report: SubjectReport) -> bytes:
    return _encoder.encode(report) + b"\n"


# -- offline verification ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubjectVerdict:
    ok: bool
    code: str | None = None
    message: str = ""
    records: int = 0
    size: int = 0
    root: str = ""
    key_id: str = ""
    fingerprint: str = ""
    witnesses: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.ok:
            return f"FAIL: {self.code}: {self.message}"
        return (
            f"OK: {self.records} records about this person, each included in the log at "
            f"tree size {self.size}, root {self.root}, key {self.key_id}"
        )


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def verify_report(
    data: bytes,
    keys: dict[str, Ed25519PublicKey],
    witnesses: Sequence[WitnessKey] = (),
    min_witnesses: int = 0,
) -> SubjectVerdict:
    """Check a report offline: seal, checkpoint signature (and cosignatures), every
    inclusion proof, every record's canonical bytes, and that each record is about
    the person (commitments opened at the given positions)."""
    try:
        return _verify(data, keys, witnesses, min_witnesses)
    except _Refused as refused:
        return SubjectVerdict(False, refused.code, refused.message)


def _verify(
    data: bytes,
    keys: dict[str, Ed25519PublicKey],
    witnesses: Sequence[WitnessKey],
    min_witnesses: int,
) -> SubjectVerdict:
    body = data[:-1] if data.endswith(b"\n") else data
    try:
        report = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _Refused("malformed", str(exc)) from None
    if _encoder.encode(report) != body or not data.endswith(b"\n"):
        raise _Refused("non_canonical", "the report is not in its canonical encoding")
    if report.format != FORMAT:
        raise _Refused("malformed", f"unsupported report format {report.format!r}")
    key = keys.get(report.key_id)
    if key is None:
        raise _Refused("unknown_key", f"the report is sealed by unknown key id {report.key_id}")
    seal = strict_b64decode(report.seal)
    if seal is None or not verify_signature(key, seal, report.signed_bytes()):
        raise _Refused("bad_signature", "the report's seal does not verify")
    try:
        checkpoint, others = checkpoint_from_note(report.checkpoint.encode(), keys)
    except NoteError as exc:
        raise _Refused("bad_signature", f"checkpoint: {exc}") from None
    if checkpoint.origin != report.origin:
        raise _Refused("origin_mismatch", f"the checkpoint is of log {checkpoint.origin!r}")
    cosigned = _cosigners(checkpoint, others, witnesses)
    if len(cosigned) < min_witnesses:
        raise _Refused(
            "unwitnessed",
            f"the checkpoint has {len(cosigned)} valid witness cosignatures, "
            f"{min_witnesses} required",
        )
    own = set(report.pseudonyms)
    named_requests = set()
    for entry in report.records:
        record = _check_record(entry, checkpoint, own)
        if entry.why == "names":
            named_requests.add(record.request_id)
    for entry in report.records:
        if entry.why == "outcome":
            record = decode_record(entry.leaf.encode())
            if record.request_id not in named_requests:
                raise _Refused(
                    "not_about_subject",
                    f"record seq {entry.seq} is the outcome of no lookup about this person",
                )
    return SubjectVerdict(
        True,
        records=len(report.records),
        size=checkpoint.size,
        root=checkpoint.root,
        key_id=checkpoint.key_id,
        fingerprint=fingerprint(keys[checkpoint.key_id]),
        witnesses=tuple(sorted(cosigned)),
    )


def _cosigners(
    checkpoint: Checkpoint, lines: Sequence[str], witnesses: Sequence[WitnessKey]
) -> set[str]:
    valid: set[str] = set()
    for line in lines:
        for witness in witnesses:
            try:
                if witness.verify(checkpoint.note(), line) is not None:
                    valid.add(witness.name)
            except NoteError as exc:
                raise _Refused("bad_cosignature", str(exc)) from None
    return valid


def _check_record(
    entry: ReportRecord, checkpoint: Checkpoint, own: set[str]
) -> AuditRecord | AuditRecordV1:
    leaf = entry.leaf.encode()
    try:
        record = decode_record(leaf)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _Refused("malformed", f"record seq {entry.seq}: {exc}") from None
    if canonical_bytes(record) != leaf:
        raise _Refused("non_canonical", f"record seq {entry.seq} is not in canonical encoding")
    try:
        proof = [base64.b64decode(h, validate=True) for h in entry.proof]
        root = root_from_inclusion_proof(entry.seq, checkpoint.size, leaf_hash(leaf), proof)
    except ValueError as exc:
        raise _Refused("not_included", f"record seq {entry.seq}: {exc}") from None
    if root != checkpoint.root_hash:
        raise _Refused(
            "not_included",
            f"record seq {entry.seq}: its proof leads to another root than the checkpoint's",
        )
    if entry.why not in ("names", "outcome") or (entry.why == "names") != bool(entry.matches):
        raise _Refused("malformed", f"record seq {entry.seq}: why {entry.why!r} and its matches")
    for match in entry.matches:
        if match.pseudonym not in own:
            raise _Refused("not_about_subject", f"record seq {entry.seq}: another pseudonym")
        if isinstance(record, AuditRecordV1):
            if not 0 <= match.position < len(record.subjects) or (
                record.subjects[match.position] != match.pseudonym
            ):
                raise _Refused("not_about_subject", f"record seq {entry.seq}: no such subject")
            continue
        people = record.people
        try:
            salt = bytes.fromhex(match.salt)
        except ValueError:
            raise _Refused("malformed", f"record seq {entry.seq}: salt is not hex") from None
        if not 0 <= match.position < len(people) or (
            people[match.position].c != commitment(salt, match.pseudonym)
        ):
            raise _Refused(
                "not_about_subject",
                f"record seq {entry.seq}: the commitment at position {match.position} is not "
                "this person's",
            )
    if isinstance(record, AuditRecordV1) and not own.issuperset(record.subjects):
        raise _Refused("reveals_other", f"record seq {entry.seq} names another person in clear")
    return record


# -- the page for the person --------------------------------------------------------------

_COLUMNS = ("seq", "time", "kind", "client", "purpose", "route", "decision", "outcome", "status")


def render_html(report: SubjectReport) -> str:
    """A self-contained page: what was looked up about the person, by whom, when, why."""
    esc = html.escape
    rows = []
    for entry in report.records:
        record = decode_record(entry.leaf.encode())
        fields = msgspec.structs.asdict(record)
        cells = [str(entry.seq)] + [
            "" if fields.get(name) is None else str(fields.get(name)) for name in _COLUMNS[1:]
        ]
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    note_lines = report.checkpoint.split("\n")
    digest = hashlib.sha256(encode_report(report)).hexdigest()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>What was looked up about you</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.2em .5em;font-size:90%}}
code,pre{{background:#f4f4f4}}</style></head><body>
<h1>What was looked up about you</h1>
<p>Every lookup of a score about you through this gateway at <b>{esc(report.upstream)}</b>,
as recorded in its signed audit log <code>{esc(report.origin)}</code>, up to
{esc(report.generated)}: which internal system asked (client), for what purpose,
what the policy decided and what happened. No score is stored.</p>
<table><tr>{"".join(f"<th>{esc(c)}</th>" for c in _COLUMNS)}</tr>
{chr(10).join(rows) or '<tr><td colspan="9">No lookup about you is recorded.</td></tr>'}
</table>
{
        f"<p>{report.omitted_v1} older record(s) about you also name other people in a form that "
        "would identify them; ask the data-protection officer for a redacted copy.</p>"
        if report.omitted_v1
        else ""
    }
<h2>How you can check this</h2>
<p>The file this page came with (SHA-256 <code>{digest}</code>) holds each record
exactly as it is in the log, with a proof that it is included in the log at size
{esc(note_lines[1] if len(note_lines) > 1 else "?")}, signed by the gateway
{"and cosigned by independent witnesses " if report.checkpoint.count(chr(0x2014)) > 1 else ""}
in this checkpoint:</p>
<pre>{esc(report.checkpoint)}</pre>
<p>Other people in these records appear only as commitments that reveal nothing
about them. To verify offline: <code>gateway audit verify-subject REPORT --public-key
KEYS.pem</code>, with the public keys the organisation published.</p>
</body></html>
"""
