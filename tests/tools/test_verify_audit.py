"""tools/verify_audit.py, the auditor's standalone verifier, gives the same verdicts as
`gateway audit verify`: same exit code, same first-failure code and line."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.log import AuditLog
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_export
from gateway.cli import main
from tests.audit.support import export_bytes, make_entry, make_record_v1
from tests.audit.test_verify import TAMPERS, join, lines_of

TOOL = Path(__file__).resolve().parents[2] / "tools" / "verify_audit.py"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify_audit", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["verify_audit"] = module
    spec.loader.exec_module(module)
    return module


tool = _tool()


def test_the_tool_needs_only_python_and_cryptography() -> None:
    """Its imports are the standard library and `cryptography`, nothing of the gateway."""
    tree = ast.parse(TOOL.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"cryptography"}


@pytest.fixture(scope="module")
def mixed_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditStore, KeyRing]:
    """Format-1 then format-2 records, checkpoints at sizes 10, 20 and 30."""
    data = tmp_path_factory.mktemp("mixed")
    keyring = KeyRing.load_or_create(data)
    store = AuditStore.open(data_dir=data)

    async def scenario() -> None:
        log = AuditLog(store, keyring, clock=lambda: 1_800_000_000.0)
        await log.start()
        for i in range(10):
            await log.append(make_record_v1(i))
        await log.checkpoint()
        for i in range(10, 30):
            await log.append(*make_entry(i))
            if i % 10 == 9:  # checkpoints at 10, 20, 30, where the named tampers expect them
                await log.checkpoint()
        await log.close()

    asyncio.run(scenario())
    return store, keyring


def _both(data: bytes, keyring: KeyRing, tmp_path: Path) -> tuple[tuple[object, ...], ...]:
    path = tmp_path / "export.jsonl"
    path.write_bytes(data)
    ours = verify_export(path, keyring.public_pems(), progress=False, workers=1)
    try:
        tool.verify(path, tool.load_pem_keys(keyring.public_pems()))
        theirs: tuple[object, ...] = (True, None, None)
    except tool.Failure as failure:
        theirs = (False, failure.code, failure.line)
    return (ours.ok, ours.code, ours.line), theirs


@pytest.mark.parametrize(("tamper", "code", "fragment"), TAMPERS)
def test_named_tampers_get_the_same_verdict(
    mixed_log: tuple[AuditStore, KeyRing],
    tmp_path: Path,
    tamper: Callable[[list[bytes]], tuple[list[bytes], int]],
    code: str,
    fragment: str,
) -> None:
    """Every named tamper case of the gateway's verifier fails the same way in the tool."""
    store, keyring = mixed_log
    lines, _ = tamper(lines_of(export_bytes(store, keyring)))
    ours, theirs = _both(join(lines), keyring, tmp_path)
    assert ours == theirs
    assert ours[0] is False


def test_intact_exports_pass_both(mixed_log: tuple[AuditStore, KeyRing], tmp_path: Path) -> None:
    """A full and a time-window export pass both verifiers."""
    store, keyring = mixed_log
    for data in (
        export_bytes(store, keyring),
        export_bytes(store, keyring, since="2026-11-25T18:16:10.000000Z"),
    ):
        ours, theirs = _both(data, keyring, tmp_path)
        assert ours == theirs == (True, None, None)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)  # fmt: skip
@given(st.data())
def test_any_changed_byte_gets_the_same_verdict(
    mixed_log: tuple[AuditStore, KeyRing], tmp_path: Path, data: st.DataObject
) -> None:
    """A bit flipped anywhere: both fail, with the same code at the same line."""
    store, keyring = mixed_log
    export = bytearray(export_bytes(store, keyring))
    position = data.draw(st.integers(0, len(export) - 1))
    export[position] ^= 1 << data.draw(st.integers(0, 7))
    ours, theirs = _both(bytes(export), keyring, tmp_path)
    assert ours == theirs


def test_the_command_line_agrees_on_exit_codes(
    mixed_log: tuple[AuditStore, KeyRing], tmp_path: Path
) -> None:
    """Run as a script, the tool exits 0 where `gateway audit verify` does, and 1 with the
    same `FAIL line L: code:` start where it fails; --previous agrees too."""
    store, keyring = mixed_log
    pem = tmp_path / "keys.pem"
    pem.write_bytes(keyring.public_pems())
    good = tmp_path / "good.jsonl"
    good.write_bytes(export_bytes(store, keyring))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good.read_bytes().replace(b'"decision":"allow"', b'"decision":"deny!"', 1))
    for args in ([str(good)], [str(bad)], [str(good), "--previous", str(good)]):
        script = subprocess.run(
            [sys.executable, str(TOOL), *args, "--public-key", str(pem)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        ours = main(["audit", "verify", "--quiet", *args, "--public-key", str(pem)])
        assert script.returncode == ours, script.stderr
        if ours:
            assert script.stderr.startswith("FAIL line ")


@pytest.fixture(scope="module")
def witnessed_pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, KeyRing, Path]:
    """An export with pruned records, an audit.prune record and cosigned checkpoints."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.audit.note import WitnessKey, cosign
    from tests.audit.test_retention import _fill, _prune

    data = tmp_path_factory.mktemp("witnessed")
    keyring = KeyRing.load_or_create(data)
    store = AuditStore.open(data_dir=data)
    _fill(store, keyring, 30)
    _prune(store, keyring)
    witness = Ed25519PrivateKey.generate()
    for checkpoint in store.iter_checkpoints(0, 1 << 40):
        line = cosign("w.test/1", witness, checkpoint.note(), 1_800_000_000)
        store.add_cosignature(checkpoint.size, "w.test/1", line)
    export = export_bytes(store, keyring)
    store.close()
    vkey = data / "w.vkey"
    vkey.write_text(WitnessKey("w.test/1", witness.public_key()).vkey() + "\n")
    return export, keyring, vkey


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param(None, None, id="intact"),
        pytest.param(("cosignatures", 60), "bad_cosignature", id="cosignature-flipped"),
        pytest.param(("pruned", 40), "malformed", id="pruned-hash-flipped"),
    ],
)
def test_witnessed_and_pruned_exports_get_the_same_verdict(
    witnessed_pruned: tuple[bytes, KeyRing, Path],
    tmp_path: Path,
    change: tuple[str, int] | None,
    code: str | None,
) -> None:
    """Cosignatures and pruned ranges are checked alike by both verifiers."""
    export, keyring, vkey = witnessed_pruned
    if change is not None:
        marker = {"cosignatures": b'"cosignatures":["', "pruned": b'"type":"pruned"'}[change[0]]
        at = export.index(marker) + len(marker) + change[1]
        export = export[:at] + (b"A" if export[at : at + 1] != b"A" else b"B") + export[at + 1 :]
    path = tmp_path / "w.jsonl"
    path.write_bytes(export)
    witnesses = tool.load_witnesses(vkey.read_text())
    from gateway.audit.note import load_witness_keys

    ours = verify_export(path, keyring.public_pems(), workers=1, progress=False,
                         witnesses=load_witness_keys(vkey.read_text()), min_witnesses=1)  # fmt: skip
    try:
        result = tool.verify(path, tool.load_pem_keys(keyring.public_pems()), witnesses, 1)
        theirs: tuple[object, ...] = (True, None, None)
        assert result.pruned == [(0, 20)]
    except tool.Failure as failure:
        theirs = (False, failure.code, failure.line)
    assert (ours.ok, ours.code, ours.line) == theirs
    if code is None:
        assert ours.ok
        assert ours.pruned == ((0, 20),)
    else:
        assert ours.code == code


def test_a_trusted_checkpoint_note_gets_the_same_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--trusted-checkpoint: both accept a note the export extends and refuse an edited one."""
    data = tmp_path / "var"
    keyring = KeyRing.load_or_create(data)
    store = AuditStore.open(data_dir=data)

    async def grow(first: int, count: int) -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(first, first + count):
            await log.append(*make_entry(i))
        await log.close()

    asyncio.run(grow(0, 7))
    store.close()
    capsys.readouterr()
    assert main(["audit", "checkpoint", "--data-dir", str(data)]) == 0
    note = capsys.readouterr().out
    store = AuditStore.open(data_dir=data)
    asyncio.run(grow(7, 5))
    export = tmp_path / "e.jsonl"
    export.write_bytes(export_bytes(store, keyring))
    store.close()
    pem = tmp_path / "k.pem"
    pem.write_bytes(keyring.public_pems())
    for name, text in (("good", note), ("edited", note.replace("\n7\n", "\n6\n"))):
        path = tmp_path / f"{name}.note"
        path.write_text(text)
        args = [str(export), "--public-key", str(pem), "--trusted-checkpoint", str(path)]
        script = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True,
                                text=True, check=False)  # fmt: skip
        ours = main(["audit", "verify", "--quiet", *args])
        assert script.returncode == ours == (0 if name == "good" else 1), script.stderr


def test_a_format_1_export_gets_the_same_verdict(
    mixed_log: tuple[AuditStore, KeyRing], tmp_path: Path
) -> None:
    """Exports of the first format pass both verifiers; a /1 file with format-2 checkpoint
    lines fails both alike."""
    from tests.audit.test_export_formats import _as_format_1

    store, keyring = mixed_log
    data = export_bytes(store, keyring)
    ours, theirs = _both(_as_format_1(data, keyring), keyring, tmp_path)
    assert ours == theirs == (True, None, None)
    mixed = _as_format_1(data, keyring, keep_checkpoint_format=True)
    ours, theirs = _both(mixed, keyring, tmp_path)
    assert ours == theirs
    assert ours[1] == "malformed"
