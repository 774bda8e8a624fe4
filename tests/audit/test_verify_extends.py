"""``verify NEW --previous OLD`` / ``--trusted-checkpoint``: a newer export must extend
what an auditor already holds, and a rewritten history is named where it diverges."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import update

from gateway.audit.log import AuditLog
from gateway.audit.signing import KeyRing
from gateway.audit.store import META, AuditStore
from gateway.cli import main
from tests.audit.support import make_record


def _append(data_dir: Path, first: int, count: int, *, origin: str | None = None,
            rewrite: int | None = None) -> None:  # fmt: skip
    async def scenario() -> None:
        store = AuditStore.open(data_dir=data_dir)
        if origin is not None:
            with store.engine.begin() as conn:
                conn.execute(update(META).where(META.c.key == "origin").values(value=origin))
        log = AuditLog(store, KeyRing.load_or_create(data_dir))
        await log.start()
        for i in range(first, first + count):
            record = make_record(i)
            if i == rewrite:
                record = msgspec.structs.replace(record, decision="deny", status=403)
            await log.append(record)
        await log.close()
        store.close()

    asyncio.run(scenario())


def _export(data_dir: Path, out: Path, *extra: str) -> Path:
    assert main(["audit", "export", "--data-dir", str(data_dir), "--out", str(out), *extra]) == 0
    return out


def _origin(data_dir: Path) -> str:
    store = AuditStore.open(data_dir=data_dir)
    try:
        return store.origin
    finally:
        store.close()


@pytest.fixture
def history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    """An old export of 20 records, a key file, and the data dir with 15 more after it."""
    data = tmp_path / "data"
    _append(data, 0, 20)
    old = _export(data, tmp_path / "old.jsonl")
    _append(data, 20, 15)
    pem = tmp_path / "keys.pem"
    assert main(["keys", "public", "--data-dir", str(data)]) == 0
    pem.write_text(capsys.readouterr().out)
    return data, old, pem


def _verify(*args: str) -> int:
    return main(["audit", "verify", "--quiet", *args])


def test_a_later_export_extends_the_earlier_one(
    history: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consistent pair of exports verifies, and the output says what was proven and
    which key fingerprint was trusted."""
    data, old, pem = history
    new = _export(data, tmp_path / "new.jsonl")
    capsys.readouterr()
    assert _verify(str(new), "--public-key", str(pem), "--previous", str(old)) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 35 records")
    assert "\ntrusted key " in out
    assert " sha256:" in out
    assert "extends: tree size 20 of " in out


def test_a_rewritten_history_is_caught_with_previous(
    history: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log rebuilt with one record changed, re-signed with the same key, verifies on
    its own but not as an extension of the old export; the first divergence is named."""
    data, old, pem = history
    forged = tmp_path / "forged"
    (forged / "keys").mkdir(parents=True)
    for key_file in (data / "keys").iterdir():
        shutil.copy2(key_file, forged / "keys" / key_file.name)
    _append(forged, 0, 35, origin=_origin(data), rewrite=3)
    new = _export(forged, tmp_path / "forged.jsonl")
    capsys.readouterr()
    assert _verify(str(new), "--public-key", str(pem)) == 0
    assert _verify(str(new), "--public-key", str(pem), "--previous", str(old)) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL: inconsistent: ")
    assert "first divergence at record seq 3" in err


def test_an_older_export_does_not_extend_a_newer_one(
    history: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Giving the exports the wrong way round is a rollback, not a pass."""
    data, old, pem = history
    new = _export(data, tmp_path / "new.jsonl")
    capsys.readouterr()
    assert _verify(str(old), "--public-key", str(pem), "--previous", str(new)) == 1
    assert capsys.readouterr().err.startswith("FAIL: rollback: ")


def test_a_trusted_checkpoint_note_is_extended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A C2SP checkpoint note kept from `gateway audit checkpoint` pins the old tree."""
    data = tmp_path / "data"
    _append(data, 0, 12)
    capsys.readouterr()
    assert main(["audit", "checkpoint", "--data-dir", str(data)]) == 0
    note = capsys.readouterr().out
    lines = note.split("\n")
    assert lines[0] == _origin(data)
    assert lines[1] == "12"
    assert lines[4] == ""
    assert lines[5].startswith(f"\u2014 {lines[0]} ")
    (tmp_path / "checkpoint.note").write_text(note)
    _append(data, 12, 5)
    new = _export(data, tmp_path / "new.jsonl")
    pem = tmp_path / "keys.pem"
    pem.write_bytes(KeyRing.load(data).public_pems())
    capsys.readouterr()
    args = [str(new), "--public-key", str(pem), "--trusted-checkpoint"]
    assert _verify(*args, str(tmp_path / "checkpoint.note")) == 0
    assert "extends: tree size 12 of " in capsys.readouterr().out
    (tmp_path / "edited.note").write_text(note.replace("\n12\n", "\n11\n"))
    assert _verify(*args, str(tmp_path / "edited.note")) == 1
    assert "no signature on the checkpoint verifies" in capsys.readouterr().err


def test_an_omitted_range_that_hides_the_old_size_is_unprovable(
    history: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A filtered export that skips past the old size cannot prove the prefix; it says so."""
    data, old, pem = history
    new = _export(data, tmp_path / "new.jsonl", "--since", "2026-11-25T18:16:30Z")
    capsys.readouterr()
    assert _verify(str(new), "--public-key", str(pem), "--previous", str(old)) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL: unprovable: size 20 of ")
    assert "inside the omitted range [0, 30)" in err
