"""The C2SP tlog-witness: cosigns only consistent, growing checkpoints of logs it knows,
refuses with the specification's status codes, and keeps evidence of misbehaviour."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from gateway.audit.checkpoint import Checkpoint, checkpoint_note
from gateway.audit.export import fresh_checkpoint
from gateway.audit.log import AuditLog
from gateway.audit.note import WitnessKey
from gateway.audit.proofs import consistency
from gateway.audit.signing import KeyRing
from gateway.audit.store import META, AuditStore
from gateway.audit.verify import verify_export
from gateway.audit.witness import (
    ALERTS_FILE,
    Witness,
    WitnessSetupError,
    create_witness_app,
    load_or_create_key,
)
from gateway.audit.witnessing import WitnessEndpoint, WitnessPusher
from tests.audit.support import export_bytes, make_record

NAME = "witness.test/w1"


def _append(store: AuditStore, keyring: KeyRing, first: int, count: int, *, salt: str = "") -> None:
    async def scenario() -> None:
        log = AuditLog(store, keyring)
        await log.start()
        for i in range(first, first + count):
            await log.append(msgspec.structs.replace(make_record(i), request_id=f"req-{i}{salt}"))
        await log.close()

    asyncio.run(scenario())


class Log:
    """A real store and key ring, grown on demand, with its own checkpoints."""

    def __init__(self, data_dir: Path, keyring: KeyRing, origin: str | None = None) -> None:
        self.store = AuditStore.open(data_dir=data_dir)
        if origin is not None:
            with self.store.engine.begin() as conn:
                conn.execute(update(META).where(META.c.key == "origin").values(value=origin))
        self.keyring = keyring
        self.size = 0

    def grow(self, count: int, salt: str = "") -> Checkpoint:
        _append(self.store, self.keyring, self.size, count, salt=salt)
        self.size += count
        return fresh_checkpoint(self.store, self.keyring)

    def request(self, old: int, checkpoint: Checkpoint, proof: list[bytes] | None = None) -> bytes:
        if proof is None:
            proof = consistency(self.store, old, checkpoint.size)[0]
        note = checkpoint_note(checkpoint, self.keyring.public_keys[checkpoint.key_id])
        lines = b"".join(base64.b64encode(h) + b"\n" for h in proof)
        return b"old %d\n" % old + lines + b"\n" + note


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    keyring = KeyRing.load_or_create(tmp_path / "log")
    honest = Log(tmp_path / "log", keyring)
    yield honest
    honest.store.close()


@pytest.fixture
def witness(tmp_path: Path, log: Log) -> Witness:
    private, _ = load_or_create_key(tmp_path / "witness", NAME)
    logs = {log.store.origin: {"k": log.keyring.public_keys[log.keyring.key_id]}}
    return Witness(NAME, private, logs, tmp_path / "witness")


def _witness_key(tmp_path: Path) -> WitnessKey:
    return load_or_create_key(tmp_path / "witness", NAME)[1]


def _alerts(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "witness" / ALERTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cosigns_a_growing_consistent_log(tmp_path: Path, log: Log, witness: Witness) -> None:
    """Each checkpoint, with a proof from the last cosigned size, gets a cosignature that
    verifies under the witness key; the state survives a restart."""
    key = _witness_key(tmp_path)
    first = log.grow(10)
    answer = witness.add_checkpoint(log.request(0, first))
    assert answer.status == 200, answer.body
    assert key.verify(first.note(), answer.body.decode().strip()) is not None
    second = log.grow(7)
    answer = witness.add_checkpoint(log.request(10, second))
    assert answer.status == 200, answer.body
    assert key.verify(second.note(), answer.body.decode().strip()) is not None
    private, _ = load_or_create_key(tmp_path / "witness", NAME)
    again = Witness(NAME, private, witness._logs, tmp_path / "witness")
    assert again.state(log.store.origin) == (17, second.root_hash)
    assert _alerts(tmp_path) == []


def _other_key_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """The same checkpoint signed by a key the witness was not given."""
    stranger = Ed25519PrivateKey.generate()
    return msgspec.structs.replace(
        checkpoint, signature=base64.b64encode(stranger.sign(checkpoint.note())).decode()
    )


@pytest.mark.parametrize(
    ("case", "status"),
    [
        pytest.param("unknown-origin", 404, id="unknown-origin"),
        pytest.param("untrusted-key", 403, id="untrusted-key"),
        pytest.param("old-beyond-size", 400, id="old-beyond-size"),
        pytest.param("stale-old-size", 409, id="stale-old-size"),
        pytest.param("no-blank-line", 400, id="no-blank-line"),
        pytest.param("old-leading-zero", 400, id="old-leading-zero"),
        pytest.param("proof-not-base64", 400, id="proof-not-base64"),
        pytest.param("too-many-proof-lines", 400, id="too-many-proof-lines"),
        pytest.param("wrong-proof", 422, id="wrong-proof"),
    ],
)
def test_refusals_use_the_specified_status(
    tmp_path: Path, log: Log, witness: Witness, case: str, status: int
) -> None:
    """Every refusal answers the status tlog-witness names and cosigns nothing."""
    first = log.grow(6)
    assert witness.add_checkpoint(log.request(0, first)).status == 200
    second = log.grow(5)
    good = log.request(6, second)
    body = {
        "unknown-origin": good.replace(second.origin.encode(), b"other.example/log"),
        "untrusted-key": log.request(6, _other_key_checkpoint(second)),
        "old-beyond-size": log.request(6, second).replace(b"old 6\n", b"old 12\n", 1),
        "stale-old-size": log.request(3, second),
        "no-blank-line": good.replace(b"\n\n", b"\n"),
        "old-leading-zero": good.replace(b"old 6\n", b"old 06\n", 1),
        "proof-not-base64": good.replace(b"old 6\n", b"old 6\n!!!!\n", 1),
        "too-many-proof-lines": log.request(6, second, [b"\x00" * 32] * 64),
        "wrong-proof": log.request(6, second, [b"\x01" * 32] * 3),
    }[case]
    answer = witness.add_checkpoint(body)
    assert answer.status == status, answer.body
    if case == "stale-old-size":
        assert answer.content_type == "text/x.tlog.size"
        assert answer.body == b"6\n"
    assert witness.state(log.store.origin) == (6, first.root_hash)


def test_a_split_view_is_refused_and_alerted(tmp_path: Path, log: Log, witness: Witness) -> None:
    """Two histories under one origin and key: once the witness cosigned one, the other is
    refused at the same size (409) and when it grows (422), with an alert each time."""
    cosigned = log.grow(10)
    assert witness.add_checkpoint(log.request(0, cosigned)).status == 200
    fork = Log(tmp_path / "fork", log.keyring, origin=log.store.origin)
    try:
        forked = fork.grow(10, salt="-other")
        assert forked.size == cosigned.size
        assert forked.root != cosigned.root
        same_size = witness.add_checkpoint(fork.request(10, forked))
        assert same_size.status == 409
        grown = fork.grow(5, salt="-other")
        answer = witness.add_checkpoint(fork.request(10, grown))
        assert answer.status == 422
    finally:
        fork.store.close()
    reasons = [alert["reason"] for alert in _alerts(tmp_path)]
    assert len(reasons) == 2
    assert "split view" in reasons[0]
    assert "consistency proof from 10 to 15 fails" in reasons[1]
    assert witness.state(log.store.origin) == (10, cosigned.root_hash)


def test_a_rollback_is_refused_and_alerted(tmp_path: Path, log: Log, witness: Witness) -> None:
    """A signed checkpoint smaller than one already cosigned is evidence of a rollback."""
    small = log.grow(4)
    big = log.grow(4)
    assert witness.add_checkpoint(log.request(0, big)).status == 200
    assert witness.add_checkpoint(log.request(8, small, [])).status == 400
    assert "rollback" in _alerts(tmp_path)[0]["reason"]


def test_a_damaged_state_file_refuses_to_start(tmp_path: Path, witness: Witness) -> None:
    """Starting from nothing would forget every size vouched for: refuse instead."""
    (tmp_path / "witness" / "witness-state.json").write_text("{not json")
    private, _ = load_or_create_key(tmp_path / "witness", NAME)
    with pytest.raises(WitnessSetupError, match="unreadable"):
        Witness(NAME, private, witness._logs, tmp_path / "witness")


def test_a_witness_keeps_its_name(tmp_path: Path) -> None:
    """The key ID depends on the name, so a restart under another name is refused."""
    load_or_create_key(tmp_path / "w", NAME)
    with pytest.raises(WitnessSetupError, match="keeps its name"):
        load_or_create_key(tmp_path / "w", "witness.test/other")


def test_the_gateway_pusher_gets_every_checkpoint_cosigned_over_http(
    tmp_path: Path, log: Log, witness: Witness
) -> None:
    """The pusher submits each checkpoint over HTTP; exports carry the cosignatures and
    verify with --witness-key, and fail when a cosignature is altered or too few."""
    key = _witness_key(tmp_path)

    async def scenario() -> None:
        runner = web.AppRunner(create_witness_app(witness))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            pusher = WitnessPusher(
                log.store, log.keyring, [WitnessEndpoint(f"http://127.0.0.1:{port}", key)],
                session, interval=0.05,
            )  # fmt: skip
            audit = AuditLog(log.store, log.keyring, checkpoint_interval=0.02,
                             on_checkpoint=pusher.notify)  # fmt: skip
            await audit.start()
            pusher.start()
            for i in range(40):
                await audit.append(make_record(i))
                if i % 8 == 7:
                    await asyncio.sleep(0.03)
            await audit.close()
            await pusher.stop()
        await runner.cleanup()

    asyncio.run(scenario())
    sizes = [c.size for c in log.store.iter_checkpoints(1, 1 << 40)]
    assert len(sizes) >= 3
    cosigned = log.store.cosignatures(0, 1 << 40)
    assert set(sizes) <= set(cosigned)
    data = export_bytes(log.store, log.keyring)
    pem = log.keyring.public_pems()
    result = verify_export([data], pem, witnesses=[key], min_witnesses=1)
    assert result.ok, result
    assert result.witnesses == (NAME,)
    assert not verify_export([data], pem, witnesses=[key], min_witnesses=2).ok
    line = next(x for x in data.split(b"\n") if b'"cosignatures":["' in x)
    start = line.index(b'"cosignatures":["') + len(b'"cosignatures":["') + 40
    flipped = line[:start] + (b"A" if line[start : start + 1] != b"A" else b"B") + line[start + 1 :]
    tampered = verify_export([data.replace(line, flipped)], pem, witnesses=[key])
    assert not tampered.ok
    assert tampered.code == "bad_cosignature"


def test_the_sequencer_pushes_every_checkpoint_to_its_witnesses(tmp_path: Path) -> None:
    """With --workers, the sequencer process is the log's one writer; it pushes the
    checkpoints, including the last one signed at shutdown."""
    from gateway.audit.sequencer import SequencerClient, run_sequencer
    from tests.audit.support import make_entry
    from tests.audit.test_sequencer import short_socket

    data = tmp_path / "var"
    keyring = KeyRing.load_or_create(data)
    store = AuditStore.open(data_dir=data)
    private, key = load_or_create_key(tmp_path / "witness", NAME)
    vkey = tmp_path / "witness" / "witness.vkey"
    logs = {store.origin: {"k": keyring.public_keys[keyring.key_id]}}
    witness = Witness(NAME, private, logs, tmp_path / "witness")
    path = short_socket()

    async def scenario() -> None:
        runner = web.AppRunner(create_witness_app(witness))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready = asyncio.Event()
        sequencer = asyncio.create_task(
            run_sequencer(data, None, path, ready=ready, witnesses=[f"{url}={vkey}"])
        )
        await asyncio.wait_for(ready.wait(), 10)
        client = SequencerClient(path)
        await client.start()
        for i in range(30):
            await client.append(*make_entry(i))
            if i % 10 == 9:
                await client.checkpoint()
        await client.close()
        # The sequencer's own SIGTERM handler (on this loop) stops it as serve would.
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(sequencer, 20)
        await runner.cleanup()

    asyncio.run(scenario())
    sizes = [c.size for c in store.iter_checkpoints(1, 1 << 40)]
    assert sizes[-1] == 30
    assert set(sizes) <= set(store.cosignatures(0, 1 << 40))
    assert witness.state(store.origin) is not None
    store.close()
    assert key.name == NAME
