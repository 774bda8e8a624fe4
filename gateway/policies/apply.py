"""A staged policy change: check, test, replay, diff, and only then write.

``gateway policy apply NEW.yaml`` runs the steps in this order and stops at the
first that fails; nothing is written before all of them pass and someone said yes:

1. **check**: the file loads (every problem as ``FILE:LINE:COL``);
2. **test cases**: the YAML cases (``gateway policy test``'s machinery) all pass;
3. **replay**: what the change would have done to the logged lookups; a loosening
   stops here unless ``--allow-loosening``;
4. **diff**: the change in plain words against the active file.

Then the file is written over the active one atomically (a temporary file in the
same directory, flushed to disk, renamed), so the running gateway, which polls the
file, sees the whole new file or none of it.

Who applied it: before the rename an **apply note** is written to the data dir
(``policy-apply.json``: the new file's SHA-256, the actor, the diff summary). When
the gateway loads a file whose digest matches the note, its ``policy.load`` record
names that actor and carries the summary; a file that loosens the policy and has
no matching note was saved outside ``apply``, and is marked so (in the record, in
``GET /admin/policy`` and in the report).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.diff import loosenings, policy_diff, summary
from gateway.policies.loader import PolicyError, parse_policy
from gateway.policies.replay import ReplaySummary, replay
from gateway.policies.testing import CaseResult, run_cases

__all__ = [
    "NOTE_FILE",
    "ApplyNote",
    "LoadMarks",
    "StagedChange",
    "commit_change",
    "load_marks",
    "stage_change",
    "write_atomically",
    "write_note",
]

NOTE_FILE = "policy-apply.json"
NOTE_MAX_AGE = 3600.0  # seconds: an old note does not vouch for a later save


class ApplyNote(msgspec.Struct, frozen=True, kw_only=True):
    """Who applied which file bytes, and what the change was."""

    digest: str  # sha256:<hex> of the file's bytes
    version: str  # the policy version (digest of its meaning) the file loads as
    actor: str  # cli:NAME or an admin token id
    summary: str
    loosening: list[str] = []
    time: float = 0.0


def file_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_note(data_dir: Path, note: ApplyNote) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(data_dir / NOTE_FILE, msgspec.json.encode(note))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class LoadMarks:
    """What a ``policy.load`` record adds about a change: who, what, and any loosening
    saved outside ``apply``."""

    actor: str | None
    summary: str | None
    loosening: tuple[str, ...]  # non-empty only for a loosening without an apply note

    def detail(self) -> str | None:
        parts = []
        if self.actor:
            parts.append(f"applied by {self.actor}")
        if self.summary:
            parts.append(self.summary)
        if self.loosening:
            parts.append(
                "LOOSENING saved outside 'gateway policy apply': " + "; ".join(self.loosening)
            )
        return "; ".join(parts) or None


def load_marks(
    data_dir: Path,
    previous: CompiledPolicy | None,
    current: CompiledPolicy,
    *,
    now: float | None = None,
) -> LoadMarks:
    """Marks for the load of ``current`` after ``previous`` (``None``: the first load)."""
    if previous is None or previous.version == current.version:
        return LoadMarks(actor=None, summary=None, loosening=())
    changes = summary(policy_diff(previous.policy, current.policy))
    note = _note_for(data_dir, current.version, now=now)
    if note is not None:
        return LoadMarks(actor=note.actor, summary=changes, loosening=())
    return LoadMarks(
        actor=None,
        summary=changes,
        loosening=tuple(loosenings(previous.policy, current.policy)),
    )


def _note_for(data_dir: Path, version: str, *, now: float | None) -> ApplyNote | None:
    try:
        note = msgspec.json.decode((data_dir / NOTE_FILE).read_bytes(), type=ApplyNote)
    except (OSError, msgspec.DecodeError):
        return None
    current = time.time() if now is None else now
    if note.version != version or current - note.time > NOTE_MAX_AGE:
        return None
    return note


@dataclass(slots=True)
class StagedChange:
    """The four steps of a staged change, as far as they got, and the verdict.

    ``refused`` is ``None`` when the file may be written, else why not, in words.
    """

    name: str
    new: CompiledPolicy | None = None
    problems: list[str] = field(default_factory=list)
    cases_dir: Path | None = None
    cases: list[CaseResult] = field(default_factory=list)
    replay: ReplaySummary | None = None
    replay_skipped: str | None = None
    diff: list[str] = field(default_factory=list)
    may_loosen: list[str] = field(default_factory=list)
    refused: str | None = None

    @property
    def failed_cases(self) -> list[CaseResult]:
        return [r for r in self.cases if not r.passed]


def stage_change(
    data: bytes,
    *,
    name: str,
    active: CompiledPolicy | None,
    cases_dir: Path | None = None,
    base: Path | None = None,
    records: Callable[[], Iterable[tuple[int, bytes]]] | None,
    since: str | None = None,
    until: str | None = None,
    allow_loosening: bool = False,
) -> StagedChange:
    """Check, test, replay and diff ``data`` against ``active``; write nothing."""
    staged = StagedChange(name=name, cases_dir=cases_dir)
    try:
        new = compile_policy(parse_policy(data, filename=name))
    except PolicyError as exc:
        staged.problems = exc.lines()
        staged.refused = "the file has errors"
        return staged
    staged.new = new
    # The cases are the ones the new file names (settings.tests, relative to where it
    # will be written), as a running gateway would run them; --cases overrides.
    if cases_dir is not None:
        dirs = [cases_dir]
    else:
        where = base if base is not None else Path(".")
        dirs = [where / d for d in new.policy.settings.tests]
    if not dirs:
        staged.refused = "the policy names no test cases (settings: tests)"
        return staged
    shown = ", ".join(str(d) for d in dirs)
    staged.cases_dir = dirs[0]
    for directory in dirs:
        if not directory.is_dir():
            staged.refused = f"no test cases at {directory}"
            return staged
        staged.cases += run_cases(new, directory)
    if not staged.cases:
        staged.refused = f"no test cases found in {shown}"
        return staged
    if staged.failed_cases:
        staged.refused = f"{len(staged.failed_cases)} test case(s) fail in {shown}"
        return staged
    if active is None:
        staged.replay_skipped = "there is no valid active policy to compare with"
        staged.diff = ["a new policy file"]
    else:
        if records is None:
            staged.replay_skipped = "no audit log to replay"
        else:
            try:
                staged.replay = replay(records(), active, new, since=since, until=until)
            except (OSError, ValueError) as exc:
                staged.replay_skipped = str(exc)
        staged.diff = policy_diff(active.policy, new.policy)
        staged.may_loosen = loosenings(active.policy, new.policy)
    loosens = bool(staged.may_loosen) or (staged.replay is not None and staged.replay.loosening)
    if loosens and not allow_loosening:
        staged.refused = "this change loosens the policy"
    return staged


def commit_change(
    staged: StagedChange, data: bytes, *, target: Path, data_dir: Path, actor: str
) -> None:
    """Leave the apply note, then replace ``target`` with ``data`` in one rename."""
    if staged.refused is not None or staged.new is None:
        raise ValueError(f"a refused change cannot be written: {staged.refused}")
    write_note(
        data_dir,
        ApplyNote(
            digest=file_digest(data),
            version=staged.new.version,
            actor=actor,
            summary=summary(staged.diff),
            loosening=staged.may_loosen,
            time=time.time(),
        ),
    )
    write_atomically(target, data)
