"""Keep one policy active; replace it whole when its file changes, and only if it may go live.

``PolicyHolder.current`` is a single attribute. A request reads it once and is
decided entirely under that one version; a reload builds the new
:class:`CompiledPolicy` off to the side and swaps the attribute in one step, so no
request ever sees half of one policy and half of another.

A changed file goes live only if :func:`~gateway.policies.admission.admit_policy`
admits it: it reads, it checks, and its own test cases pass (``require_tests``).
Anything else, an invalid, unreadable or deleted file, a failing case, or an
exception nobody foresaw, leaves the last good policy in force; the holder records
why (``pending_error``, ``FILE:LINE:COL`` each) and since when, for
``GET /admin/policy``. The watcher outlives every one of them: a policy saved with
a mistake must never stop later saves from being picked up.

Objections (GDPR Art. 21) are not policy changes: a change to the objection list
takes effect at once, without the test cases, even when the rest of the same file
is refused.

Every load attempt, good or bad, is reported to the ``on_load`` hook as a
:class:`PolicyLoad`, which the app logs and writes as a ``policy.load`` audit record.

The watcher polls the file (size, modification time, inode, then a digest of the
bytes) about once a second. Polling needs no platform file-notification API,
works on network and container file systems, and catches editors that save by
writing a new file and renaming it over the old one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from gateway.audit.record import rfc3339
from gateway.policies.admission import CasesFailed, admit_policy
from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.loader import PolicyError, PolicySource, policy_version
from gateway.policies.model import Policy
from gateway.policies.yamlsource import Problem

__all__ = ["OnLoad", "PolicyHolder", "PolicyLoad", "PolicyStatus", "describe_change"]

log = logging.getLogger("gateway.policy")


class PolicyLoad(msgspec.Struct, frozen=True, kw_only=True):
    """One load attempt, as the ``on_load`` hook (and so the audit record) sees it.

    Nothing in it is personal: objections appear only as a count.
    """

    ok: bool
    # The version in force after the attempt: the new one when ``ok``, the one kept
    # when not, ``None`` if there is none yet (a refused first load).
    version: str | None
    previous: str | None = None
    # ``sha256:`` of the file's bytes as tried (comments included), if it was read.
    file_digest: str | None = None
    errors: tuple[str, ...] = ()
    # The failing test cases among ``errors``.
    failing_cases: tuple[str, ...] = ()
    # What changed, in plain words (rules added, removed, changed, ...).
    changes: str | None = None
    # Only the objection list changed: it went live without running the cases.
    objections_only: bool = False
    cases_passed: int = 0


OnLoad = Callable[[PolicyLoad], None]
"""``on_load(load)``, called after every load attempt, synchronously, from the thread
that ran the reload; an async app schedules its own task from it. An exception it
raises is logged and does not affect the reload."""


class PolicyStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``GET /admin/policy`` shows about the active policy and any refused change."""

    version: str
    path: str
    loaded_at: str  # RFC 3339, UTC
    rules: int
    require_tests: bool
    pending_error: list[str] | None = None
    pending_since: str | None = None  # RFC 3339, UTC: since when the file is refused
    failing_cases: list[str] | None = None
    # Changes that may loosen the policy, when the active file was saved outside
    # ``gateway policy apply`` (set by the app from :func:`gateway.policies.apply.load_marks`).
    loosening: list[str] | None = None


_Signature = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns)


class PolicyHolder:
    """The active policy, its file, and the outcome of the last load attempt."""

    def __init__(
        self,
        path: str | Path,
        *,
        on_load: OnLoad | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
    ) -> None:
        """Load ``path`` now; raises ``PolicyError`` if it may not go live (nothing to keep)."""
        self.path = Path(path)
        self._on_load = on_load
        self._clock = clock
        self.interval = interval
        self.pending_error: tuple[str, ...] | None = None
        self.pending_cases: tuple[str, ...] | None = None
        self.pending_since: float | None = None
        self.loosening: tuple[str, ...] = ()
        self._signature: _Signature | None = None
        self._digest: str | None = None
        self._task: asyncio.Task[None] | None = None
        signature = self._stat()
        try:
            raw = self._read()
            admitted = admit_policy(raw, self.path)
        except PolicyError as exc:
            self._notify(PolicyLoad(ok=False, version=None, errors=tuple(exc.lines())))
            raise
        self._source: PolicySource = admitted.source
        self.current: CompiledPolicy = admitted.policy
        self.loaded_at = clock()
        self._signature = signature
        self._digest = _digest(raw)
        self._notify(
            PolicyLoad(
                ok=True,
                version=admitted.policy.version,
                file_digest=self._digest,
                cases_passed=admitted.cases_passed,
            )
        )

    # -- reloading --------------------------------------------------------------------

    def reload(self) -> bool:
        """Admit the file off to the side and swap it in whole. ``True`` if swapped.

        On any problem the active policy stays, and ``pending_error`` says why. Never
        raises: whatever happens is a refusal with its reason.
        """
        try:
            return self._reload()
        except Exception as exc:
            log.exception("policy reload failed: %s", type(exc).__name__)
            problem = Problem(
                "policy.reload_failed",
                f"the file could not be loaded ({type(exc).__name__}); the previous "
                "policy stays in force",
                1,
                1,
            )
            return self._failed((problem.render(str(self.path)),), (), None)

    def _reload(self) -> bool:
        signature = self._stat()
        try:
            raw = self._read()
        except PolicyError as exc:
            self._signature = signature
            self._digest = None
            return self._failed(tuple(exc.lines()), (), None)
        self._signature = signature
        self._digest = _digest(raw)
        previous = self.current
        try:
            admitted = admit_policy(raw, self.path, previous=previous)
        except CasesFailed as exc:
            cases = tuple(
                p.render(exc.filename) for p in exc.problems if p.code == "policy.test_failed"
            )
            self._take_objections(exc.source)
            return self._failed(tuple(exc.lines()), cases, self._digest)
        except PolicyError as exc:
            return self._failed(tuple(exc.lines()), (), self._digest)
        compiled = admitted.policy
        # One assignment: a request that already read ``current`` keeps its version.
        self.current = compiled
        self._source = admitted.source
        self.loaded_at = self._clock()
        self.pending_error = None
        self.pending_cases = None
        self.pending_since = None
        self._notify(
            PolicyLoad(
                ok=True,
                version=compiled.version,
                previous=previous.version,
                file_digest=self._digest,
                changes=describe_change(previous.policy, compiled.policy),
                objections_only=admitted.tests_skipped,
                cases_passed=admitted.cases_passed,
            )
        )
        return True

    def _take_objections(self, refused: PolicySource) -> None:
        """Put the objection list of a file refused for its tests in force at once.

        The rest of the active policy stays as it was; the new version is the digest
        of exactly that (the active policy with the new objection list)."""
        active = self._source
        objections = refused.policy.objections
        if objections == active.policy.objections:
            return
        policy = msgspec.structs.replace(active.policy, objections=objections)
        source = dataclasses.replace(active, policy=policy, version=policy_version(policy))
        previous = self.current
        self.current = compile_policy(source)
        self._source = source
        self.loaded_at = self._clock()
        self._notify(
            PolicyLoad(
                ok=True,
                version=self.current.version,
                previous=previous.version,
                changes=describe_change(previous.policy, policy),
                objections_only=True,
            )
        )

    def check_for_change(self) -> bool | None:
        """Reload if the file changed since the last attempt; ``None`` if it did not."""
        signature = self._stat()
        if signature == self._signature:
            return None
        if signature is not None:
            try:
                digest: str | None = _digest(self.path.read_bytes())
            except OSError:
                digest = None
            if digest is not None and digest == self._digest:
                # Touched or rewritten with the same bytes: nothing to do.
                self._signature = signature
                return None
        return self.reload()

    def _failed(self, errors: tuple[str, ...], cases: tuple[str, ...], digest: str | None) -> bool:
        if errors != self.pending_error:
            self.pending_since = self._clock()
        self.pending_error = errors
        self.pending_cases = cases or None
        self._notify(
            PolicyLoad(
                ok=False,
                version=self.current.version,
                previous=self.current.version,
                file_digest=digest,
                errors=errors,
                failing_cases=cases,
            )
        )
        return False

    def _notify(self, load: PolicyLoad) -> None:
        if self._on_load is None:
            return
        try:
            self._on_load(load)
        except Exception as exc:
            log.exception("the policy load hook failed: %s", type(exc).__name__)

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
        Nothing but cancellation ends the loop.
        """
        seen = self._stat()
        while True:
            await asyncio.sleep(self.interval)
            try:
                now = self._stat()
                if now != seen:
                    seen = now
                    continue
                self.check_for_change()
            except Exception as exc:
                log.exception("policy watcher: %s; still watching", type(exc).__name__)

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
        except Exception as exc:  # noqa: BLE001 - never fail the app's shutdown
            log.error("the policy watcher had stopped: %s", type(exc).__name__)

    # -- status -------------------------------------------------------------------------

    def status(self) -> PolicyStatus:
        """The active version, when it was loaded, and any change that was refused."""
        current = self.current
        return PolicyStatus(
            version=current.version,
            path=str(self.path),
            loaded_at=rfc3339(self.loaded_at),
            rules=len(current.rules),
            require_tests=current.policy.settings.require_tests,
            pending_error=list(self.pending_error) if self.pending_error else None,
            pending_since=rfc3339(self.pending_since) if self.pending_since is not None else None,
            failing_cases=list(self.pending_cases) if self.pending_cases else None,
            loosening=list(self.loosening) or None,
        )


def describe_change(old: Policy, new: Policy) -> str:
    """What a change does, in plain words, for the log and the audit record.

    Rules, clients and upstreams by id; purposes by name; objections by count only
    (they are pseudonyms of people)."""
    parts: list[str] = []

    def compare(what: str, before: dict[str, object], after: dict[str, object]) -> None:
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
        for verb, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                parts.append(f"{what} {verb}: {', '.join(names)}")

    compare("rules", {r.id: r for r in old.rules}, {r.id: r for r in new.rules})
    if [r.id for r in old.rules] != [r.id for r in new.rules] and {r.id for r in old.rules} == {
        r.id for r in new.rules
    }:
        parts.append("rules reordered")
    compare("clients", {c.id: c for c in old.clients}, {c.id: c for c in new.clients})
    compare("upstreams", {u.name: u for u in old.upstreams}, {u.name: u for u in new.upstreams})
    compare("purposes", dict(old.purposes), dict(new.purposes))
    if old.settings != new.settings:
        parts.append("settings changed")
    if old.objections != new.objections:
        parts.append(f"objections: {len(old.objections)} -> {len(new.objections)}")
    return "; ".join(parts) or "no change in meaning (comments or layout only)"


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _problem(code: str, message: str) -> Problem:
    return Problem(code, message, 1, 1)
