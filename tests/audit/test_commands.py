"""The CLI: keys, export, verify exit codes and one-line failure messages, subject access."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from gateway.audit import commands
from gateway.audit.log import AuditLog
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from tests.audit.support import make_entry


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gateway")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture
def populated(data_dir: Path) -> Path:
    assert run("keys", "generate", "--data-dir", str(data_dir)) == 0
    pseudonyms = Pseudonymizer.load_or_create(data_dir)
    alice = pseudonyms.pseudonym("twitter_screen_name", "alice")

    async def scenario() -> None:
        store = AuditStore.open(data_dir=data_dir)
        log = AuditLog(store, KeyRing.load(data_dir))
        await log.start()
        for i in range(20):
            await log.append(
                *make_entry(
                    i, subjects=[alice] if i % 5 == 0 else (), committer=pseudonyms.committer()
                )
            )
        await log.close()
        store.close()

    asyncio.run(scenario())
    return data_dir


def test_export_then_verify(
    populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pem = tmp_path / "audit.jsonl", tmp_path / "keys.pem"
    assert run("audit", "export", "--data-dir", str(populated), "--out", str(out)) == 0
    assert run("keys", "public", "--data-dir", str(populated)) == 0
    pem.write_text(capsys.readouterr().out)
    assert run("audit", "verify", str(out), "--public-key", str(pem)) == 0
    assert capsys.readouterr().out.startswith("OK: 20 records")


def test_verify_failure_is_one_line_exit_1(
    populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pem = tmp_path / "audit.jsonl", tmp_path / "keys.pem"
    run("audit", "export", "--data-dir", str(populated), "--out", str(out))
    pem.write_bytes(KeyRing.load(populated).public_pems())
    lines = out.read_bytes().splitlines(keepends=True)
    lines[5], lines[6] = lines[6], lines[5]
    out.write_bytes(b"".join(lines))
    capsys.readouterr()
    assert run("audit", "verify", str(out), "--public-key", str(pem)) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL line 6: reordered: record seq")
    assert err.count("\n") == 1


def test_rotate_and_verify_with_several_key_files(
    populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_pem = tmp_path / "old.pem"
    old_pem.write_bytes(KeyRing.load(populated).public_pem())
    assert run("keys", "rotate", "--data-dir", str(populated)) == 0
    new_pem = tmp_path / "new.pem"
    new_pem.write_bytes(KeyRing.load(populated).public_pem())
    out = tmp_path / "audit.jsonl"
    assert run("audit", "export", "--data-dir", str(populated), "--out", str(out)) == 0
    args = ("audit", "verify", str(out), "--public-key", str(old_pem))
    assert run(*args, "--public-key", str(new_pem)) == 0
    assert run(*args) == 1
    assert "unknown_key" in capsys.readouterr().err


def test_export_refuses_a_bad_key(
    populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = KeyRing.load(populated)
    ring.private_key_path.write_text("garbage")
    assert run("audit", "export", "--data-dir", str(populated), "--out", str(tmp_path / "x")) == 1
    assert capsys.readouterr().err.startswith("audit.signing_key_invalid:")


def test_subject_access(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every record about alice, with proofs against a signed checkpoint."""
    argv = [
        "--data-dir",
        str(populated),
        "--upstream",
        "klout",
        "--namespace",
        "twitter_screen_name",
    ]
    assert run("audit", "subject", *argv, "--subject", "alice", "--proofs") == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    checkpoint, entries = lines[0], lines[1:]
    assert checkpoint["size"] == 20
    assert [e["seq"] for e in entries] == [0, 5, 10, 15]
    assert all(e["proof"] for e in entries)
    assert run("audit", "subject", *argv, "--subject", "bob") == 0
    assert capsys.readouterr().out == ""
