"""``gateway witness``: an independent C2SP ``tlog-witness`` that cosigns checkpoints.

A witness holds its own Ed25519 key and one small state file: for each log it
follows (by origin), the size and root of the latest checkpoint it cosigned. A
log submits each new checkpoint with a consistency proof from that size
(``POST /add-checkpoint``); the witness cosigns only if the checkpoint is signed
by a key it was given for that origin, the proof holds, and the size never goes
back. So a log that rewrites its history, or shows two histories to two people
(a split view), cannot get both cosigned by the same witness: the second one has
no valid proof from the state the witness already holds.

Status codes are the specification's (c2sp.org/tlog-witness):

=====  ===================================================================
404    "If the checkpoint origin is unknown"
403    "If none of the signatures verify against a trusted public key"
400    "The old size MUST be equal to or lower than the checkpoint size"
       (and any body that is not the request format)
409    "old size [does not match] the size of the latest checkpoint it cosigned"
       (body: that size, ``text/x.tlog.size``), or the same size with another root
422    "If the Merkle Consistency Proof doesn't verify"
200    one cosignature line (c2sp.org/tlog-cosignature), after the new state is on disk
=====  ===================================================================

Refusals that are evidence of misbehaviour (a different root at the cosigned
size, a proof that fails, a signed checkpoint smaller than one cosigned) are
logged as alerts and appended, with the request body, to ``alerts.jsonl``:
"the witness MAY log the request even if the consistency proof doesn't verify
(but MUST NOT cosign the checkpoint) as it might be proof of log misbehavior."
The check and the state update happen under one lock, atomically, as the
specification requires (its race in which two requests roll the state back).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.merkle import ProofError, verify_consistency
from gateway.audit.note import (
    ED25519,
    NoteError,
    WitnessKey,
    cosign,
    parse_note,
    parse_vkey,
    verify_log_signature,
)
from gateway.audit.signing import write_atomic

log = logging.getLogger("gateway.witness")

KEY_FILE = "witness-key.pem"
VKEY_FILE = "witness.vkey"
STATE_FILE = "witness-state.json"
ALERTS_FILE = "alerts.jsonl"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63  # "The client MUST NOT send more than 63 consistency proof lines."
MAX_BODY = 64 * 1024


class WitnessSetupError(Exception):
    """The witness's key, state or configuration cannot be used."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def load_or_create_key(data_dir: Path, name: str) -> tuple[Ed25519PrivateKey, WitnessKey]:
    """The witness's key (created on first use, mode 0600) and its public vkey, which
    names the witness: a later start under another name is refused."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, vkey_path = data_dir / KEY_FILE, data_dir / VKEY_FILE
    if key_path.exists():
        try:
            private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise WitnessSetupError(f"{key_path} is not a usable private key: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise WitnessSetupError(f"{key_path} is not an Ed25519 private key")
    else:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(key_path, pem, 0o600)
    public = WitnessKey(name, private.public_key())
    try:
        vkey = public.vkey()
    except NoteError as exc:
        raise WitnessSetupError(f"witness name: {exc}") from None
    if vkey_path.exists():
        existing = vkey_path.read_text(encoding="utf-8").strip()
        if existing.split("+", 1)[0] != name:
            raise WitnessSetupError(
                f"{vkey_path} names this witness {existing.split('+', 1)[0]!r}, not {name!r}: "
                "a witness keeps its name (its key ID depends on it)"
            )
    write_atomic(vkey_path, (vkey + "\n").encode())
    return private, public


def load_log_keys(texts: list[str]) -> dict[str, dict[str, Ed25519PublicKey]]:
    """Log vkeys (type 0x01, named after the log's origin) → ``{origin: {label: key}}``."""
    logs: dict[str, dict[str, Ed25519PublicKey]] = {}
    for text in texts:
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                origin, kind, key = parse_vkey(line)
            except NoteError as exc:
                raise WitnessSetupError(f"log key: {exc}") from None
            if kind != ED25519:
                raise WitnessSetupError(f"log key {origin!r} is not an Ed25519 log key (0x01)")
            keys = logs.setdefault(origin, {})
            keys[f"{origin}#{len(keys)}"] = key
    if not logs:
        raise WitnessSetupError("no log key given: a witness follows at least one log")
    return logs


class Witness:
    """The add-checkpoint logic: parse, check, persist, cosign. Thread-safe."""

    def __init__(
        self,
        name: str,
        private_key: Ed25519PrivateKey,
        logs: dict[str, dict[str, Ed25519PublicKey]],
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._key = private_key
        self._logs = logs
        self._state_path = data_dir / STATE_FILE
        self._alerts_path = data_dir / ALERTS_FILE
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self._load_state()

    def _load_state(self) -> dict[str, tuple[int, bytes]]:
        if not self._state_path.exists():
            return {}
        try:
            raw = json.loads(self._state_path.read_text(encoding="utf-8"))
            return {
                origin: (int(entry["size"]), base64.b64decode(entry["root"], validate=True))
                for origin, entry in raw["logs"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            # Never start from nothing over a damaged state: that would forget every
            # size this witness vouched for, and cosign a rollback.
            raise WitnessSetupError(f"{self._state_path} is unreadable: {exc}") from None

    def _save_state(self) -> None:
        logs = {
            origin: {"size": size, "root": base64.b64encode(root).decode()}
            for origin, (size, root) in sorted(self._state.items())
        }
        data = json.dumps({"format": 1, "logs": logs}, indent=1).encode() + b"\n"
        write_atomic(self._state_path, data)

    def state(self, origin: str) -> tuple[int, bytes] | None:
        with self._lock:
            return self._state.get(origin)

    def _alert(self, origin: str, reason: str, body: bytes) -> None:
        log.error("ALERT log %s: %s", origin, reason)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock())),
            "origin": origin,
            "reason": reason,
            "request": body.decode("utf-8", "replace"),
        }
        with self._alerts_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add_checkpoint(self, body: bytes) -> Answer:
        try:
            old, proof, note_bytes = _parse_request(body)
            note = parse_note(note_bytes)
        except (NoteError, ValueError) as exc:
            return Answer(400, f"{exc}\n".encode())
        lines = note.text.decode().split("\n")[:-1]
        if len(lines) < 3:
            return Answer(400, b"the checkpoint has no origin, size and root lines\n")
        origin, size_text, root_text = lines[:3]
        keys = self._logs.get(origin)
        if keys is None:
            return Answer(404, b"unknown log origin\n")
        try:
            if verify_log_signature(note, origin, keys) is None:
                return Answer(403, b"no signature verifies under a key of this log\n")
        except NoteError as exc:
            return Answer(403, f"{exc}\n".encode())
        if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
            return Answer(400, b"the tree size is not a decimal without leading zeros\n")
        size = int(size_text)
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error:
            return Answer(400, b"the root hash is not base64\n")
        if len(root) != 32:
            return Answer(400, b"the root hash is not 32 bytes\n")
        with self._lock:
            known_size, known_root = self._state.get(origin, (0, b""))
            if size < known_size:
                self._alert(
                    origin,
                    f"signed checkpoint of size {size} after cosigning size {known_size}: rollback",
                    body,
                )
            if old > size:
                return Answer(400, b"the old size is larger than the checkpoint size\n")
            if old != known_size:
                return Answer(409, f"{known_size}\n".encode(), SIZE_CONTENT_TYPE)
            try:
                verify_consistency(old, size, known_root, root, proof)
            except ProofError as exc:
                if old == size:
                    self._alert(origin, f"two roots at size {size}: split view ({exc})", body)
                    return Answer(409, f"{known_size}\n".encode(), SIZE_CONTENT_TYPE)
                self._alert(origin, f"consistency proof from {old} to {size} fails: {exc}", body)
                return Answer(422, f"{exc}\n".encode())
            if size != known_size or not known_root:
                self._state[origin] = (size, root)
                self._save_state()  # "MUST persist the new checkpoint before responding"
        line = cosign(self.name, self._key, note.text, int(self._clock()))
        return Answer(200, (line + "\n").encode())


def _parse_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    """``old N``, proof lines, a blank line, the checkpoint note."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise ValueError("the request is: old size line, proof lines, blank line, checkpoint")
    lines = head.split(b"\n")
    first = lines[0]
    if not first.startswith(b"old "):
        raise ValueError("the first line is 'old <size>'")
    number = first[4:]
    if not number.isdigit() or (number != b"0" and number.startswith(b"0")):
        raise ValueError("the old size is a decimal without leading zeros")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise ValueError(f"at most {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            node = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise ValueError("a consistency proof line is not base64") from None
        if len(node) != 32:
            raise ValueError("a consistency proof line is not a 32-byte hash")
        proof.append(node)
    return int(number), proof, note


def create_witness_app(witness: Witness) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    lock = asyncio.Lock()

    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.read()
        async with lock:  # one request at a time also keeps the event loop free
            answer = await asyncio.to_thread(witness.add_checkpoint, body)
        if answer.status != 200:
            log.info("add-checkpoint refused with %d: %s", answer.status, answer.body[:200])
        return web.Response(
            status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": witness.name})

    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/healthz", healthz)
    return app


async def serve_witness(witness: Witness, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; print the bound URL first (port 0: a free one).
    State is on disk after every cosignature, so stopping loses nothing."""
    runner = web.AppRunner(create_witness_app(witness), access_log=None)
    await runner.setup()
    sock = socket.create_server((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    bound = sock.getsockname()[1]
    print(f"witness {witness.name} listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
