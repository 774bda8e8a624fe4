"""The offline verifier: every tamper case is named and reported with its code and line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit import verify
from gateway.audit.log import AuditLog
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import CODES, VerifyResult, verify_export
from tests.audit.support import export_bytes, fill, make_record_v1

Lines = list[bytes]


def _build(data_dir: Path, keyring: KeyRing, rounds: int = 3) -> bytes:
    """A log of 10 records per round with a checkpoint after each round; its export."""

    async def scenario(store: AuditStore) -> None:
        log = AuditLog(store, keyring, clock=lambda: 1_800_000_000.0)
        await log.start()
        for r in range(rounds):
            await fill(log, 10, start=10 * r)
            await log.checkpoint()
        await log.close()

    store = AuditStore.open(data_dir=data_dir)
    try:
        asyncio.run(scenario(store))
        return export_bytes(store, keyring)
    finally:
        store.close()


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing.load_or_create(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, keyring: KeyRing) -> bytes:
    return _build(tmp_path_factory.mktemp("log"), keyring)


@pytest.fixture(scope="module")
def other_origin_export(tmp_path_factory: pytest.TempPathFactory, keyring: KeyRing) -> bytes:
    """Another log signed by the same key: its checkpoints are valid, but not ours."""
    return _build(tmp_path_factory.mktemp("other"), keyring, rounds=1)


def lines_of(data: bytes) -> Lines:
    return data.split(b"\n")[:-1]


def join(lines: Lines) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def at(lines: Lines, kind: str, key: str, value: int) -> int:
    """Index of the line of ``kind`` whose ``key`` is ``value``."""
    for index, line in enumerate(lines):
        obj = json.loads(line)
        if obj["type"] == kind and obj.get(key) == value:
            return index
    raise LookupError((kind, key, value))


def test_intact_export_verifies(export: bytes, keyring: KeyRing) -> None:
    result = verify_export([export], keyring.public_pems())
    assert result.ok, str(result)
    assert (result.records, result.size, result.checkpoints) == (30, 30, 4)
    assert str(result).startswith("OK: 30 records")


def test_parallel_path_verifies(export: bytes, keyring: KeyRing, tmp_path: Path) -> None:
    result = verify_both_ways(export, keyring.public_keys, tmp_path, parallel=True)
    assert result.ok, str(result)
    assert (result.records, result.checkpoints) == (30, 4)


def test_export_in_odd_chunks_verifies(export: bytes, keyring: KeyRing) -> None:
    """Chunk boundaries do not matter: a line split across reads is reassembled."""
    chunks = [export[i : i + 7] for i in range(0, len(export), 7)]
    assert verify_export(chunks, keyring.public_keys).ok


# -- tamper cases: (change the lines) -> (code, 1-based line, message fragment) ---------


def changed_field(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 15)
    lines[i] = lines[i].replace(b'"decision":"allow"', b'"decision":"deny"')
    return lines, at(lines, "checkpoint", "size", 20) + 1


def deleted_line(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 15)
    del lines[i]
    return lines, i + 1


def swapped_lines(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 15)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    return lines, i + 1


def moved_back(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 5)
    line = lines.pop(i)
    lines.insert(at(lines, "record", "seq", 8) + 1, line)
    return lines, i + 1


def duplicated_line(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 15)
    lines.insert(i, lines[i])
    return lines, i + 2


def inserted_forged_line(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 16)
    forged = json.loads(lines[i])
    forged["record"]["purpose"] = "marketing"
    lines.insert(i, json.dumps(forged, separators=(",", ":")).encode())
    return lines, i + 2


def inserted_after_seal(lines: Lines) -> tuple[Lines, int]:
    lines.append(lines[2])
    return lines, len(lines)


def cut_tail(lines: Lines) -> tuple[Lines, int]:
    del lines[-5:]
    return lines, len(lines) + 1


def cut_seal_only(lines: Lines) -> tuple[Lines, int]:
    del lines[-1]
    return lines, len(lines) + 1


def non_canonical(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 15)
    lines[i] = json.dumps(json.loads(lines[i])).encode()  # ", " and ": " separators
    return lines, i + 1


def escaped_character(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "record", "seq", 15)
    lines[i] = lines[i].replace(b'"kind":"lookup"', b'"kind":"\\u006cookup"')
    return lines, i + 1


def checkpoint_root_changed(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "checkpoint", "size", 20)
    obj = json.loads(lines[i])
    obj["root"] = "A" * 43 + "="
    lines[i] = json.dumps(obj, separators=(",", ":")).encode()
    return lines, i + 1


def checkpoint_duplicated(lines: Lines) -> tuple[Lines, int]:
    i = at(lines, "checkpoint", "size", 20)
    lines.insert(i + 1, lines[i])
    return lines, i + 2


def seal_flipped(lines: Lines) -> tuple[Lines, int]:
    obj = json.loads(lines[-1])
    obj["sha256"] = ("0" if obj["sha256"][0] != "0" else "1") + obj["sha256"][1:]
    lines[-1] = json.dumps(obj, separators=(",", ":")).encode()
    return lines, len(lines)


def header_size_raised(lines: Lines) -> tuple[Lines, int]:
    obj = json.loads(lines[0])
    obj["size"] = 31
    lines[0] = json.dumps(obj, separators=(",", ":")).encode()
    return lines, len(lines)


def garbage_line(lines: Lines) -> tuple[Lines, int]:
    lines.insert(5, b'{"type":"record","seq":')
    return lines, 6


TAMPERS: list[object] = [
    pytest.param(changed_field, "modified", "seq 10..19", id="changed-field"),
    pytest.param(deleted_line, "deleted", "seq 15", id="deleted-record"),
    pytest.param(swapped_lines, "reordered", "seq 16 comes before seq 15", id="reordered-records"),
    pytest.param(moved_back, "reordered", "comes before seq 5", id="record-moved-later"),
    pytest.param(duplicated_line, "duplicated", "seq 15", id="duplicated-record"),
    pytest.param(inserted_forged_line, "inserted", "seq 16", id="inserted-forged-record"),
    pytest.param(inserted_after_seal, "inserted", "follows the seal", id="line-after-seal"),
    pytest.param(cut_tail, "truncated", "without its seal", id="cut-tail"),
    pytest.param(cut_seal_only, "truncated", "without its seal", id="seal-removed"),
    pytest.param(non_canonical, "non_canonical", "canonical", id="non-canonical-whitespace"),
    pytest.param(escaped_character, "non_canonical", "canonical", id="non-canonical-escape"),
    pytest.param(checkpoint_root_changed, "bad_signature", "size 20", id="checkpoint-root-changed"),
    pytest.param(checkpoint_duplicated, "duplicated", "size 20", id="duplicated-checkpoint"),
    pytest.param(seal_flipped, "bad_signature", "seal", id="flipped-byte-in-seal"),
    pytest.param(header_size_raised, "modified", "sealed bytes", id="header-changed"),
    pytest.param(garbage_line, "malformed", "", id="half-a-json-line"),
]


def verify_both_ways(
    data: bytes, keys: Mapping[str, Ed25519PublicKey], tmp_path: Path, *, parallel: bool
) -> VerifyResult:
    """Serial (bytes in memory) or parallel (a file, worker processes, tiny blocks)."""
    if not parallel:
        return verify_export([data], keys)
    path = tmp_path / "export.jsonl"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verify, "BLOCK_SIZE", 1500)  # a few lines per block: the fast path runs
        return verify_export(path, keys, workers=2)


@pytest.mark.parametrize(
    "parallel", [pytest.param(False, id="serial"), pytest.param(True, id="parallel")]
)
@pytest.mark.parametrize(("tamper", "code", "fragment"), TAMPERS)
def test_tamper_is_reported(
    export: bytes,
    keyring: KeyRing,
    tamper: Callable[[Lines], tuple[Lines, int]],
    code: str,
    fragment: str,
    parallel: bool,
    tmp_path: Path,
) -> None:
    """Each tamper fails with its own code, at the line where the evidence shows it."""
    lines, line = tamper(lines_of(export))
    result = verify_both_ways(join(lines), keyring.public_keys, tmp_path, parallel=parallel)
    assert not result.ok
    assert (result.code, result.line) == (code, line), str(result)
    assert fragment in result.message
    assert code in CODES


def test_cut_in_the_middle_of_a_line(export: bytes, keyring: KeyRing) -> None:
    cut = export[: len(export) // 2]
    result = verify_export([cut], keyring.public_keys)
    assert result.code == "truncated"
    assert result.line == cut.count(b"\n") + 1


def test_empty_file(keyring: KeyRing) -> None:
    assert verify_export([b""], keyring.public_keys).code == "truncated"


def test_wrong_public_key(export: bytes, tmp_path: Path) -> None:
    """Keys are pinned by the verifier: a checkpoint by any other key is unknown."""
    stranger = KeyRing.load_or_create(tmp_path)
    result = verify_export([export], stranger.public_pems())
    assert (result.code, result.line) == ("unknown_key", 2)


def test_checkpoint_from_another_origin(
    export: bytes, other_origin_export: bytes, keyring: KeyRing
) -> None:
    """A validly signed checkpoint of another log cannot stand in for one of ours."""
    lines = lines_of(export)
    theirs = lines_of(other_origin_export)
    i = at(lines, "checkpoint", "size", 10)
    lines[i] = theirs[at(theirs, "checkpoint", "size", 10)]
    result = verify_export([join(lines)], keyring.public_keys)
    assert (result.code, result.line) == ("origin_mismatch", i + 1)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_detected(
    export: bytes, keyring: KeyRing, data: st.DataObject
) -> None:
    """Changing any one byte of an export, to any other value, fails verification."""
    position = data.draw(st.integers(0, len(export) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != export[position]), label="byte")
    tampered = export[:position] + bytes([value]) + export[position + 1 :]
    assert not verify_export([tampered], keyring.public_keys).ok


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_deletion_is_detected(
    export: bytes, keyring: KeyRing, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(export) - 1), label="position")
    tampered = export[:position] + export[position + 1 :]
    assert not verify_export([tampered], keyring.public_keys).ok


def test_export_file_path(export: bytes, keyring: KeyRing, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(export)
    assert verify_export(path, keyring.public_pems(), progress=False).ok


def test_log_of_both_record_formats_verifies(tmp_path: Path, keyring: KeyRing) -> None:
    """Records of format 1, written before format 2, verify beside format-2 records."""

    async def scenario(store: AuditStore) -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(5):
            await log.append(make_record_v1(i))
        await fill(log, 5, start=5)
        await log.close()

    store = AuditStore.open(data_dir=tmp_path)
    try:
        asyncio.run(scenario(store))
        data = export_bytes(store, keyring)
    finally:
        store.close()
    assert b'"record":{"kind":' in data
    assert b'"record":{"v":2,' in data
    result = verify_export([data], keyring.public_keys)
    assert result.ok, str(result)
    assert result.records == 10


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(b'"record":{"v":2,', b'"record":{"v":2 ,', id="format-2-whitespace"),
        pytest.param(
            b'"record":{"v":2,"kind":"lookup",',
            b'"record":{"v":2,"kind":"lookup","rules":[],',
            id="format-2-default-encoded",
        ),
    ],
)
def test_non_canonical_format_2_record_is_reported(
    export: bytes, keyring: KeyRing, old: bytes, new: bytes
) -> None:
    """A format-2 record must be its own canonical encoding (defaults omitted)."""
    tampered = export.replace(old, new, 1)
    assert tampered != export
    result = verify_export([tampered], keyring.public_keys)
    assert not result.ok
    assert result.code in {"non_canonical", "malformed"}
