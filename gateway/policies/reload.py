"""Keep one policy active; replace it whole when its file changes, and only if it is valid.

``PolicyHolder.current`` is a single attribute. A request reads it once and is
decided entirely under that one version; a reload builds the new
:class:`CompiledPolicy` off to the side and swaps the attribute in one step, so no
request ever sees half of one policy and half of another.

A changed file that is invalid, unreadable or deleted leaves the last good policy
in force; the holder records why (``pending_error``) and since when, for
``GET /admin/policy``. Every load attempt, good or bad, is reported to the
``on_load`` hook, which the app uses to write a policy-load audit record.

The watcher polls the file (size, modification time, inode, then a digest of the
bytes) about once a second. Polling needs no platform file-notification API,
works on network and container file systems, and catches editors that save by
writing a new file and renaming it over the old one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.loader import PolicyError, parse_policy
from gateway.policies.yamlsource import Problem

__all__ = ["OnLoad", "PolicyHolder", "PolicyStatus"]

OnLoad = Callable[[str | None, bool, tuple[str, ...]], None]
"""``on_load(version, ok, errors)``, called after every load attempt.

``version`` is the version active after the attempt (the new one when ``ok``, the
one kept when not, ``None`` if there is none yet); ``errors`` are the rendered
``FILE:LINE:COL: message`` lines. It is called synchronously, from the thread
that ran the reload; an async app schedules its own task from it."""


class PolicyStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``GET /admin/policy`` shows about the active policy and any failed change."""

    version: str
    path: str
    loaded_at: float
    rules: int
    pending_error: list[str] | None = None
    pending_since: float | None = None
    # Changes that may loosen the policy, when the active file was saved outside
    # ``gateway policy apply`` (set by the app from :func:`gateway.policies.apply.load_marks`).
    loosening: list[str] | None = None


_Signature = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns)


class PolicyHolder:
    """The active policy, its file, and the history of the last load attempt."""

    def __init__(
        self,
        path: str | Path,
        *,
        on_load: OnLoad | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
    ) -> None:
        """Load ``path`` now; raises ``PolicyError`` if it is invalid (nothing to keep)."""
        self.path = Path(path)
        self._on_load = on_load
        self._clock = clock
        self.interval = interval
        self.pending_error: tuple[str, ...] | None = None
        self.pending_since: float | None = None
        self.loosening: tuple[str, ...] = ()
        self._signature: _Signature | None = None
        self._digest: str | None = None
        self._task: asyncio.Task[None] | None = None
        signature = self._stat()
        raw = self._read()
        try:
            compiled = compile_policy(parse_policy(raw, filename=str(self.path)))
        except PolicyError as exc:
            self._notify(None, False, tuple(exc.lines()))
            raise
        self.current: CompiledPolicy = compiled
        self.loaded_at = clock()
        self._signature = signature
        self._digest = hashlib.sha256(raw).hexdigest()
        self._notify(compiled.version, True, ())

    # -- reloading --------------------------------------------------------------------

    def reload(self) -> bool:
        """Validate the file off to the side and swap it in whole. ``True`` if swapped.

        On any problem the active policy stays, and ``pending_error`` says why.
        """
        signature = self._stat()
        try:
            raw = self._read()
        except PolicyError as exc:
            self._signature = signature
            self._digest = None
            return self._failed(tuple(exc.lines()))
        self._signature = signature
        self._digest = hashlib.sha256(raw).hexdigest()
        try:
            compiled = compile_policy(parse_policy(raw, filename=str(self.path)))
        except PolicyError as exc:
            return self._failed(tuple(exc.lines()))
        # One assignment: a request that already read ``current`` keeps its version.
        self.current = compiled
        self.loaded_at = self._clock()
        self.pending_error = None
        self.pending_since = None
        self._notify(compiled.version, True, ())
        return True

    def check_for_change(self) -> bool | None:
        """Reload if the file changed since the last attempt; ``None`` if it did not."""
        signature = self._stat()
        if signature == self._signature:
            return None
        if signature is not None:
            try:
                digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
            except OSError:
                digest = None
            if digest is not None and digest == self._digest:
                # Touched or rewritten with the same bytes: nothing to do.
                self._signature = signature
                return None
        return self.reload()

    def _failed(self, errors: tuple[str, ...]) -> bool:
        if errors != self.pending_error:
            self.pending_since = self._clock()
        self.pending_error = errors
        self._notify(self.current.version, False, errors)
        return False

    def _notify(self, version: str | None, ok: bool, errors: tuple[str, ...]) -> None:
        if self._on_load is not None:
            self._on_load(version, ok, errors)

    def _stat(self) -> _Signature | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            message = "the policy file was deleted or moved; the previous policy stays in force"
            raise PolicyError([_problem("file.missing", message)], str(self.path)) from None
        except OSError as exc:
            message = (
                f"the policy file cannot be read ({exc.strerror}); "
                "the previous policy stays in force"
            )
            raise PolicyError([_problem("file.unreadable", message)], str(self.path)) from None

    # -- watching -----------------------------------------------------------------------

    async def watch(self) -> None:
        """Poll the file every ``interval`` seconds and reload on change, until cancelled.

        A change is read only once the file has held still for a whole interval, so a
        file caught half-written by an editor that does not save atomically is not
        even validated (and a truncated one that happens to parse is not swapped in).
        """
        seen = self._stat()
        while True:
            await asyncio.sleep(self.interval)
            now = self._stat()
            if now != seen:
                seen = now
                continue
            self.check_for_change()

    def start(self) -> asyncio.Task[None]:
        """Start the watcher on the running event loop (once); returns its task."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.watch(), name="policy-watcher")
        return self._task

    async def stop(self) -> None:
        """Stop the watcher and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # pragma: no cover - we were cancelled ourselves
                raise

    # -- status -------------------------------------------------------------------------

    def status(self) -> PolicyStatus:
        """The active version, when it was loaded, and any change that was refused."""
        current = self.current
        return PolicyStatus(
            version=current.version,
            path=str(self.path),
            loaded_at=self.loaded_at,
            rules=len(current.rules),
            pending_error=list(self.pending_error) if self.pending_error else None,
            pending_since=self.pending_since,
            loosening=list(self.loosening) or None,
        )


def _problem(code: str, message: str) -> Problem:
    return Problem(code, message, 1, 1)
