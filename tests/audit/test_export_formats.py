"""Every export format stays verifiable: a format-1 file (header /1, checkpoint lines
without a format or cosignatures) verifies as it did, and format-2 parts in it do not."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import msgspec
import pytest

from gateway.audit.export import FORMATS, SealLine, line_encoder
from gateway.audit.log import AuditLog
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_export
from tests.audit.support import export_bytes, make_record_v1


def _as_format_1(data: bytes, keyring: KeyRing, *, keep_checkpoint_format: bool = False) -> bytes:
    """The same export written as format 1 was: /1 header, plain checkpoints, its seal."""
    lines = data.split(b"\n")[:-1]
    body = []
    for line in lines[:-1]:
        line = line.replace(FORMATS[1].encode(), FORMATS[0].encode())
        if not keep_checkpoint_format:
            line = line.replace(b',"format":2}', b"}")
        body.append(line + b"\n")
    old_seal = json.loads(lines[-1])
    seal = SealLine(
        origin=old_seal["origin"], size=old_seal["size"], root=old_seal["root"],
        lines=len(body), sha256=hashlib.sha256(b"".join(body)).hexdigest(),
        time=old_seal["time"], key_id=keyring.key_id, signature="",
    )  # fmt: skip
    signature = base64.b64encode(keyring.sign(seal.message(FORMATS[0]))).decode()
    seal = msgspec.structs.replace(seal, signature=signature)
    return b"".join(body) + line_encoder.encode(seal) + b"\n"


@pytest.fixture
def v1_log(store: AuditStore, keyring: KeyRing) -> bytes:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(12):
            await log.append(make_record_v1(i))
        await log.checkpoint()
        await log.close()

    asyncio.run(scenario())
    return export_bytes(store, keyring)


def test_a_format_1_export_still_verifies(v1_log: bytes, keyring: KeyRing) -> None:
    """An export in the first format, as auditors already hold them, verifies."""
    old = _as_format_1(v1_log, keyring)
    assert b'"format":2' not in old
    assert old.startswith(b'{"type":"header","format":"score-gateway-audit-export/1"')
    result = verify_export([old], keyring.public_pems())
    assert result.ok, result


def test_a_format_1_export_cannot_carry_format_2_checkpoints(
    v1_log: bytes, keyring: KeyRing
) -> None:
    """Format-2 checkpoint lines in a /1 file are malformed, not silently accepted."""
    mixed = _as_format_1(v1_log, keyring, keep_checkpoint_format=True)
    result = verify_export([mixed], keyring.public_pems())
    assert not result.ok
    assert result.code == "malformed"
    assert "checkpoint format 2" in result.message
