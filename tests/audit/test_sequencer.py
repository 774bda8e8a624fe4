"""The audit sequencer: one writer for every worker, over a unix socket, failing closed."""

from __future__ import annotations

import asyncio
import struct
import tempfile
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.audit.sequencer import (
    MAX_FRAME,
    OP_APPEND,
    SequencerClient,
    SequencerServer,
    decode_append,
    encode_append,
)
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.audit.subject import subject_records
from gateway.audit.verify import verify_export
from gateway.errors import AuditUnavailable
from tests.audit.support import TEST_COMMITTER, export_bytes, make_entry

ALICE = "hmac-sha256:" + "a" * 64


def short_socket() -> Path:
    """A socket path under the 108-byte limit (pytest's tmp_path can be longer)."""
    return Path(tempfile.mkdtemp(prefix="seq-")) / "s.sock"


COLUMNS = ("2026-12-01T00:00:00.000000Z", "lookup", "r", None, None, "klout")


def test_append_frames_round_trip() -> None:
    """An append frame carries the body verbatim, the columns and every index pseudonym."""
    body = b'{"v":2,"kind":"lookup"}'
    assert decode_append(encode_append(body, COLUMNS, [ALICE, "x"])) == (
        body,
        COLUMNS,
        (ALICE, "x"),
    )
    assert decode_append(encode_append(body, COLUMNS, [])) == (body, COLUMNS, ())
    odd = ("2026-12-01T00:00:00Z", "lookup", 'r"\\\n\u2028ü', "", None, None)
    assert decode_append(encode_append(body, odd, ["ü"])) == (body, odd, ("ü",))


def _framed(meta: bytes) -> bytes:
    return len(meta).to_bytes(4, "big") + meta + b"{}"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x00\x00\x05ab", id="meta-past-the-end"),
        pytest.param(b"\x00\x00\x00\x03[1]{}", id="meta-of-wrong-type"),
        pytest.param(_framed(b"[]"), id="meta-without-columns"),
        pytest.param(_framed(b"[[1,2,3,4,5,6],[]]"), id="columns-of-wrong-type"),
        pytest.param(_framed(b'[["t","k","r",null,null,null],[7]]'), id="index-of-wrong-type"),
        pytest.param(encode_append(b"not json", COLUMNS, []), id="body-not-an-object"),
    ],
)
def test_damaged_append_frames_are_refused(payload: bytes) -> None:
    """Every damaged frame is a ValueError, never another exception or a record."""
    with pytest.raises(ValueError, match=r"damaged|JSON object"):
        decode_append(payload)


async def _serve(
    store: AuditStore, keyring: KeyRing, path: Path
) -> tuple[AuditLog, SequencerServer]:
    log = AuditLog(store, keyring)
    await log.start()
    server = SequencerServer(log, path)
    await server.start()
    return log, server


def test_two_workers_share_one_gap_free_log(store: AuditStore, keyring: KeyRing) -> None:
    """Records from two clients get distinct, consecutive seqs; the export verifies and
    the subject index holds what the workers sent beside each record."""
    path = short_socket()

    async def scenario() -> list[int]:
        log, server = await _serve(store, keyring, path)
        a, b = SequencerClient(path), SequencerClient(path)
        await a.start()
        await b.start()
        try:
            seqs = await asyncio.gather(
                *(
                    (a if i % 2 else b).append(
                        *make_entry(i, subjects=[ALICE] if i % 7 == 0 else ())
                    )
                    for i in range(300)
                )
            )
            checkpoint = await a.checkpoint()
            assert checkpoint.size >= 300
            return list(seqs)
        finally:
            await a.close()
            await b.close()
            await server.close()
            await log.close()

    seqs = asyncio.run(scenario())
    assert sorted(seqs) == list(range(300))
    result = verify_export([export_bytes(store, keyring)], keyring.public_keys)
    assert result.ok, str(result)
    found = [e.seq for e in subject_records(store, [ALICE], TEST_COMMITTER)]
    assert len(found) == len(range(0, 300, 7))
    assert not path.exists()  # the socket goes with the sequencer


def test_damaged_frame_is_refused_and_nothing_is_committed(
    store: AuditStore, keyring: KeyRing
) -> None:
    """A damaged frame gets an error reply; the connection and the log carry on."""
    path = short_socket()

    async def scenario() -> None:
        log, server = await _serve(store, keyring, path)
        client = SequencerClient(path)
        await client.start()
        try:
            with pytest.raises(AuditUnavailable, match="malformed"):
                await client._call(OP_APPEND, b"\x00\x01")
            with pytest.raises(AuditUnavailable, match="malformed"):
                await client._call(OP_APPEND, encode_append(b"not json", COLUMNS, []))
            assert await client.append(*make_entry(1)) == 0
        finally:
            await client.close()
            await server.close()
            await log.close()

    asyncio.run(scenario())
    assert store.head().size == 1


def test_oversized_frame_closes_only_that_connection(store: AuditStore, keyring: KeyRing) -> None:
    """A worker that sends garbage loses its connection; others keep appending."""
    path = short_socket()

    async def scenario() -> None:
        log, server = await _serve(store, keyring, path)
        good = SequencerClient(path)
        await good.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(struct.pack(">IBI", MAX_FRAME + 1, OP_APPEND, 1))
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the sequencer
            writer.close()
            assert await good.append(*make_entry(0)) == 0
        finally:
            await good.close()
            await server.close()
            await log.close()

    asyncio.run(scenario())


def test_appends_fail_closed_while_the_sequencer_is_away_then_resume(
    store: AuditStore, keyring: KeyRing
) -> None:
    """No sequencer, no record, no lookup: appends raise AuditUnavailable and /readyz
    would say not ready; once a sequencer listens again the worker reconnects."""
    path = short_socket()

    async def scenario() -> None:
        log, server = await _serve(store, keyring, path)
        client = SequencerClient(path, stats_interval=0.05)
        await client.start()
        try:
            assert await client.append(*make_entry(0)) == 0
            assert client.healthy()
            await server.close()
            await log.close()
            with pytest.raises(AuditUnavailable):
                await client.append(*make_entry(1))
            assert not client.healthy()

            log, server = await _serve(store, keyring, path)
            for _ in range(100):
                if client.healthy():
                    break
                await asyncio.sleep(0.05)
            assert client.healthy()
            assert await client.append(*make_entry(2)) == 1
        finally:
            await client.close()
            await server.close()
            await log.close()

    asyncio.run(scenario())
    assert verify_export([export_bytes(store, keyring)], keyring.public_keys).ok


def test_client_start_fails_closed_without_a_sequencer(tmp_path: Path) -> None:
    """A worker whose sequencer never comes up does not start serving."""

    async def scenario() -> None:
        client = SequencerClient(tmp_path / "absent.sock", connect_wait=0.2)
        with pytest.raises(AuditUnavailable, match="no audit sequencer"):
            await client.start()
        await client.close()

    asyncio.run(scenario())


def test_socket_path_stays_within_the_unix_limit(tmp_path: Path) -> None:
    """A data dir too deep for a unix socket gets a private temporary one instead."""
    from gateway.audit.sequencer import socket_path

    deep = tmp_path / ("d" * 90)
    path = socket_path(deep)
    assert len(bytes(path)) < 108
    assert path.parent.stat().st_mode & 0o077 == 0
