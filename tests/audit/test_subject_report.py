"""Subject reports: one person's records with inclusion proofs, checked offline; nobody
else's pseudonym in them; any changed byte fails the check."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.checkpoint import b64
from gateway.audit.log import AuditLog
from gateway.audit.proofs import inclusion
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.record import AuditRecord
from gateway.audit.signing import KeyRing, load_public_keys
from gateway.audit.store import AuditStore
from gateway.audit.subject_report import SubjectReport, encode_report, verify_report
from gateway.cli import main
from tests.audit.support import make_entry, make_record_v1


@pytest.fixture(scope="module")
def people_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A log where alice appears alone, beside bob, as an intent with its outcome, and in
    format-1 records (alone, and beside bob)."""
    data = tmp_path_factory.mktemp("subject") / "var"
    assert main(["keys", "generate", "--data-dir", str(data)]) == 0
    pseudonyms = Pseudonymizer.load_or_create(data)
    committer = pseudonyms.committer()
    alice = pseudonyms.pseudonym("twitter_screen_name", "alice")
    alice_id = pseudonyms.pseudonym("twitter_id", "1001")
    bob = pseudonyms.pseudonym("twitter_screen_name", "bob")

    async def scenario() -> None:
        store = AuditStore.open(data_dir=data)
        log = AuditLog(store, KeyRing.load(data))
        await log.start()
        await log.append(make_record_v1(0, subjects=[alice]))
        await log.append(make_record_v1(1, subjects=[alice, bob]), [alice, bob])
        for i in range(2, 12):
            subjects = {2: [alice], 3: [alice, bob], 4: [bob], 5: [alice_id]}.get(i, [])
            await log.append(*make_entry(i, subjects=subjects, committer=committer))
        intent, index = make_entry(12, subjects=[alice], committer=committer)
        await log.append(msgspec.structs.replace(intent, kind="lookup.intent"), index)
        await log.append(*make_entry(13, committer=committer))
        outcome = AuditRecord(kind="lookup", time=intent.time, request_id=intent.request_id,
                              outcome="found", status=200)  # fmt: skip
        await log.append(outcome)
        await log.close()
        store.close()

    asyncio.run(scenario())
    return data, alice, bob


def _report(data: Path, out: Path, *subjects: str) -> int:
    argv = ["audit", "subject", "--data-dir", str(data), "--upstream", "klout"]
    argv += ["--namespace", "twitter_screen_name"] if len(subjects) == 1 else []
    for subject in subjects:
        argv += ["--subject", subject]
    return main([*argv, "--out", str(out)])


def test_a_report_verifies_and_holds_only_this_person(
    people_log: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report holds alice's records (alone, beside bob, an intent and its outcome,
    format 1 alone) with proofs that verify; bob's pseudonym appears nowhere."""
    data, _, bob = people_log
    out = tmp_path / "alice.json"
    assert _report(data, out, "alice") == 0
    report = msgspec.json.decode(out.read_bytes(), type=SubjectReport)
    assert [r.seq for r in report.records] == [0, 2, 3, 12, 14]
    assert [r.why for r in report.records] == ["names"] * 4 + ["outcome"]
    assert report.omitted_v1 == 1  # seq 1 names bob in clear
    assert bob not in out.read_text()
    assert bob not in (tmp_path / "alice.html").read_text()
    assert "<h1>What was looked up about you</h1>" in (tmp_path / "alice.html").read_text()
    pem = tmp_path / "keys.pem"
    pem.write_bytes(KeyRing.load(data).public_pems())
    capsys.readouterr()
    assert main(["audit", "verify-subject", str(out), "--public-key", str(pem)]) == 0
    assert capsys.readouterr().out.startswith("OK: 5 records about this person")


def test_every_identifier_of_the_person_is_searched(
    people_log: tuple[Path, str, str], tmp_path: Path
) -> None:
    """Given the screen name and the Twitter id, the record under the id is included too."""
    data, _, _ = people_log
    out = tmp_path / "alice.json"
    policy = Path(__file__).resolve().parents[2] / "policies.yaml"
    argv = ["audit", "subject", "--data-dir", str(data), "--upstream", "klout",
            "--policies", str(policy), "--subject", "alice", "--subject", "1001", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    seqs = [r["seq"] for r in json.loads(out.read_text())["records"]]
    assert 5 in seqs
    assert {0, 2, 3, 12, 14} <= set(seqs)


@pytest.fixture(scope="module")
def report_bytes(
    people_log: tuple[Path, str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[bytes, bytes]:
    data, _, _ = people_log
    out = tmp_path_factory.mktemp("report") / "r.json"
    assert _report(data, out, "alice") == 0
    return out.read_bytes(), KeyRing.load(data).public_pems()


def _keys(pem: bytes) -> dict[str, Ed25519PublicKey]:
    return load_public_keys(pem)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_changed_byte_fails_verification(
    report_bytes: tuple[bytes, bytes], data: st.DataObject
) -> None:
    """Flipping any bit of any byte of the report makes verify-subject fail."""
    report, pem = report_bytes
    keys = _keys(pem)
    assert verify_report(report, keys).ok
    position = data.draw(st.integers(0, len(report) - 1))
    bit = data.draw(st.integers(0, 7))
    changed = bytearray(report)
    changed[position] ^= 1 << bit
    assert not verify_report(bytes(changed), keys).ok


@pytest.mark.parametrize(
    ("case", "code"),
    [
        pytest.param(
            "record-changed-and-resealed", "not_included", id="record-changed-and-resealed"
        ),
        pytest.param("other-pseudonym-claimed", "not_about_subject", id="other-pseudonym-claimed"),
        pytest.param("proof-shortened", "not_included", id="proof-shortened"),
        pytest.param("unrelated-outcome", "not_about_subject", id="unrelated-outcome"),
    ],
)
def test_tampering_by_the_key_holder_is_still_caught(
    people_log: tuple[Path, str, str], report_bytes: tuple[bytes, bytes], case: str, code: str
) -> None:
    """Even an operator who re-seals the report cannot change a record, claim a record
    about someone else, or shorten a proof: the proofs and commitments do not follow."""
    data, _, bob = people_log
    ring = KeyRing.load(data)
    report = msgspec.json.decode(report_bytes[0], type=SubjectReport)
    records = list(report.records)
    first = records[1]
    if case == "record-changed-and-resealed":
        records[1] = msgspec.structs.replace(
            first, leaf=first.leaf.replace('"decision":"allow"', '"decision":"deny"')
        )
    elif case == "other-pseudonym-claimed":
        match = msgspec.structs.replace(first.matches[0], pseudonym=bob)
        report = msgspec.structs.replace(report, pseudonyms=[*report.pseudonyms, bob])
        records[1] = msgspec.structs.replace(first, matches=[match])
    elif case == "proof-shortened":
        records[1] = msgspec.structs.replace(first, proof=first.proof[:-1])
    else:  # a real record about someone else, with its real proof, passed off as an outcome
        size = int(report.checkpoint.split("\n")[1])
        store = AuditStore.open(data_dir=data)
        try:
            body = next(store.iter_records(13, 14)).body
            proof = inclusion(store, [13], size)[13]
        finally:
            store.close()
        records[-1] = msgspec.structs.replace(
            records[-1], seq=13, leaf=body.decode(), proof=[b64(h) for h in proof]
        )
    forged = msgspec.structs.replace(report, records=records, seal="")
    forged = msgspec.structs.replace(forged, seal=_sign(ring, forged))
    verdict = verify_report(encode_report(forged), ring.public_keys)
    assert not verdict.ok
    assert verdict.code == code, verdict


def _sign(ring: KeyRing, report: SubjectReport) -> str:
    import base64

    return base64.b64encode(ring.sign(report.signed_bytes())).decode()
