"""The gateway's side of C2SP ``tlog-witness``: push each new checkpoint to witnesses.

Off the request path: the audit writer signals each new checkpoint
(``AuditLog(on_checkpoint=...)``) and one task per gateway process pushes every
stored checkpoint the witness has not cosigned yet, in order of size, each with a
consistency proof from the last size that witness cosigned
(:func:`gateway.audit.proofs.consistency`, which reads only the leaves appended in
between). A cosignature is kept (``audit_cosignature``) only after it verifies
under the witness key the operator pinned (``--witness URL=KEYFILE``); exports
carry it on the checkpoint line.

A witness that is down or slow never holds a lookup back: the push is retried on
the next checkpoint. A ``409`` tells the current size the witness holds; the push
resumes from there. A witness that holds a size larger than this log's (a restored
backup, or a second history) is reported as an alert and not retried blindly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.audit.checkpoint import Checkpoint, checkpoint_note
from gateway.audit.note import NoteError, WitnessKey, load_witness_keys
from gateway.audit.proofs import consistency
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore, StoreError

log = logging.getLogger("gateway.witness")

#: At most this many checkpoints are pushed one by one after an outage; beyond it the
#: push jumps to the newest (the proof still covers everything in between).
MAX_BACKLOG = 256


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    url: str  # submission prefix; ``/add-checkpoint`` is appended
    key: WitnessKey


def parse_witness_options(values: Iterable[str]) -> list[WitnessEndpoint]:
    """``URL=KEYFILE`` pairs (the witness's vkey file); raise ValueError naming the bad one."""
    endpoints: list[WitnessEndpoint] = []
    for value in values:
        url, sep, path = value.partition("=")
        if not sep or not url.startswith(("http://", "https://")) or not path:
            raise ValueError(f"--witness expects http(s)://HOST:PORT=VKEYFILE, got {value!r}")
        try:
            keys = load_witness_keys(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, NoteError) as exc:
            raise ValueError(f"--witness {url}: cannot use {path}: {exc}") from None
        if len(keys) != 1:
            raise ValueError(f"--witness {url}: {path} must hold exactly one witness vkey")
        endpoints.append(WitnessEndpoint(url.rstrip("/"), keys[0]))
    names = [e.key.name for e in endpoints]
    if len(set(names)) != len(names):
        raise ValueError("two --witness options name the same witness")
    return endpoints


class WitnessPusher:
    def __init__(
        self,
        store: AuditStore,
        keyring: KeyRing,
        endpoints: list[WitnessEndpoint],
        session: aiohttp.ClientSession,
        *,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._endpoints = endpoints
        self._session = session
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._cosigned: dict[str, int] = {}  # witness name -> largest size it cosigned
        self.pushed = 0
        self.refused = 0

    def notify(self, _: Checkpoint | None = None) -> None:
        """Wake the pusher; safe from any thread (the audit writer calls it)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="witness-pusher")

    async def stop(self) -> None:
        """Stop, after one last push so the final checkpoint gets its cosignatures."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.push_all()
        self._loop = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.push_all()

    async def push_all(self) -> None:
        await asyncio.gather(*(self._push(e) for e in self._endpoints))

    async def _push(self, endpoint: WitnessEndpoint) -> None:
        name = endpoint.key.name
        try:
            if name not in self._cosigned:
                self._cosigned[name] = await asyncio.to_thread(self._store.last_cosigned_size, name)
            latest = await asyncio.to_thread(self._store.latest_checkpoint)
            if latest is None or latest[0].size <= self._cosigned[name]:
                return
            pending = await asyncio.to_thread(self._pending, self._cosigned[name] + 1)
            for checkpoint in pending:
                if not await self._submit(endpoint, checkpoint):
                    return
        except (StoreError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("witness %s: push failed: %s", name, exc.__class__.__name__)

    def _pending(self, low: int) -> list[Checkpoint]:
        checkpoints = list(self._store.iter_checkpoints(low, 1 << 62))
        if len(checkpoints) > MAX_BACKLOG:
            log.warning(
                "%d checkpoints wait for a witness; pushing the newest only", len(checkpoints)
            )
            checkpoints = checkpoints[-1:]
        return checkpoints

    async def _submit(self, endpoint: WitnessEndpoint, checkpoint: Checkpoint) -> bool:
        """Push one checkpoint; True when it was cosigned and the cosignature kept."""
        name = endpoint.key.name
        public_key = self._keyring.public_keys.get(checkpoint.key_id)
        if public_key is None:
            log.warning("checkpoint %d: signing key %s unknown here", checkpoint.size,
                        checkpoint.key_id)  # fmt: skip
            return False
        note = checkpoint_note(checkpoint, public_key)
        for _attempt in range(2):
            old = self._cosigned[name]
            if old > checkpoint.size:
                return True  # the witness is already past this one
            proof, _, _ = await asyncio.to_thread(consistency, self._store, old, checkpoint.size)
            body = (
                f"old {old}\n".encode()
                + b"".join(base64.b64encode(h) + b"\n" for h in proof)
                + b"\n"
                + note
            )
            async with self._session.post(
                endpoint.url + "/add-checkpoint", data=body, timeout=self._timeout
            ) as response:
                text = await response.text()
                status = response.status
                content_type = response.headers.get("Content-Type", "")
            if status == 200:
                return await self._keep(endpoint, checkpoint, note, text)
            self.refused += 1
            if status == 409 and content_type.startswith("text/x.tlog.size"):
                held = int(text.strip()) if text.strip().isdigit() else -1
                head = (await asyncio.to_thread(self._store.head)).size
                if held < 0 or held > head:
                    log.error(
                        "ALERT witness %s holds size %s, beyond this log's %d: it saw a longer "
                        "history (restored backup or split view); see the README's procedure",
                        name, held, head,
                    )  # fmt: skip
                    return False
                if held == old:  # same size, other root: the witness saw another history
                    log.error("ALERT witness %s refused checkpoint %d: %s", name,
                              checkpoint.size, text.strip()[:200])  # fmt: skip
                    return False
                self._cosigned[name] = held  # resync and retry once from the witness's size
                continue
            log.error(
                "witness %s refused checkpoint %d with %d: %s",
                name, checkpoint.size, status, text.strip()[:200],
            )  # fmt: skip
            return False
        return False

    async def _keep(
        self, endpoint: WitnessEndpoint, checkpoint: Checkpoint, note: bytes, text: str
    ) -> bool:
        name = endpoint.key.name
        signed = note[: note.index(b"\n\n") + 1]
        kept = False
        for line in text.splitlines():
            try:
                if endpoint.key.verify(signed, line) is None:
                    continue  # "The client MUST ignore any cosignatures from unknown keys."
            except NoteError as exc:
                log.error("witness %s sent a bad cosignature: %s", name, exc)
                return False
            await asyncio.to_thread(self._store.add_cosignature, checkpoint.size, name, line)
            kept = True
        if not kept:
            log.error("witness %s answered 200 without a cosignature by its pinned key", name)
            return False
        self._cosigned[name] = checkpoint.size
        self.pushed += 1
        return True
