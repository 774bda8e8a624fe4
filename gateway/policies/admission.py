"""What a policy file must pass to go live: it reads, it checks, it compiles, and its own
test cases pass.

One function, :func:`admit_policy`, decides it for the running gateway's reload, for
``gateway policy check`` and for ``POST /admin/policy/validate``, so all three accept
and refuse exactly the same files. It never raises anything but
:class:`~gateway.policies.loader.PolicyError`: whatever goes wrong while reading a
file (a YAML tag, a number too long to convert, a bug of ours) is a refusal with
``FILE:LINE:COL``, never an exception that could stop a watcher or answer 500.

The test cases are the ones the policy names (``settings.tests``: directories
relative to the policy file). With ``settings.require_tests`` on, the default, a
file whose cases fail, or that names none, is refused. A change to the objection
list alone is not a policy change (GDPR Art. 21 objections must take effect at
once): it is admitted without running the cases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import msgspec

from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.loader import PolicyError, PolicySource, parse_policy
from gateway.policies.testing import CaseResult, run_cases
from gateway.policies.yamlsource import Problem

__all__ = ["Admitted", "CasesFailed", "admit_policy", "case_dirs", "only_objections_differ"]

log = logging.getLogger("gateway.policy")

#: Test cases a policy may name in all, so a validate request cannot make the
#: gateway read a whole disk.
MAX_CASE_RESULTS = 10_000


class CasesFailed(PolicyError):
    """A file that reads and checks, refused because of its own test cases.

    ``source`` is the policy it holds, for the one part of it that never waits on
    tests: its objection list."""

    def __init__(self, problems: list[Problem], filename: str, source: PolicySource) -> None:
        super().__init__(problems, filename)
        self.source = source


@dataclass(frozen=True)
class Admitted:
    """A policy that may go live, and the cases that vouched for it."""

    source: PolicySource
    policy: CompiledPolicy
    cases_passed: int
    tests_skipped: bool = False  # only the objection list changed


def admit_policy(
    raw: bytes | str,
    path: str | Path,
    *,
    filename: str | None = None,
    previous: CompiledPolicy | None = None,
) -> Admitted:
    """Check ``raw`` as the text of the policy file at ``path``; raise :class:`PolicyError`
    listing everything that keeps it from going live.

    ``filename`` is how problems name the file (default ``path``). ``previous`` is the
    policy in force, if any: a text that differs from it only in its objections is
    admitted without running the cases.
    """
    path = Path(path)
    filename = filename or str(path)
    try:
        source = parse_policy(raw, filename=filename)
        compiled = compile_policy(source)
    except PolicyError:
        raise
    except Exception as exc:
        # Not expected: the loader reports every mistake it knows as a Problem. Kept
        # in the log for us, refused for the operator, and the watcher lives on.
        log.exception("the policy file could not be read: %s", type(exc).__name__)
        raise PolicyError(
            [
                Problem(
                    "policy.unreadable",
                    f"the file could not be read ({type(exc).__name__}); the previous policy "
                    "stays in force. Check the file with 'gateway policy check'",
                    1,
                    1,
                )
            ],
            filename,
        ) from None
    if previous is not None and only_objections_differ(previous, compiled):
        return Admitted(source, compiled, 0, tests_skipped=True)
    problems, passed = _run_own_cases(source, compiled, path.parent)
    if problems:
        raise CasesFailed(problems, filename, source)
    return Admitted(source, compiled, passed)


def only_objections_differ(old: CompiledPolicy, new: CompiledPolicy) -> bool:
    """Whether ``new`` says what ``old`` says, apart from its objection list."""
    if old.policy.objections == new.policy.objections:
        return False
    return msgspec.structs.replace(old.policy, objections=[]) == msgspec.structs.replace(
        new.policy, objections=[]
    )


def case_dirs(source: PolicySource, base: Path) -> tuple[list[Path], list[Problem]]:
    """The directories of test cases a policy names, resolved against ``base``.

    Each must be a relative path that stays under ``base`` (the policy's own
    directory): a policy sent to the validate endpoint must not make the gateway
    read files elsewhere.
    """
    line, col = source.tests_at
    dirs: list[Path] = []
    problems: list[Problem] = []
    for entry in source.policy.settings.tests:
        shown = entry if len(entry) <= 80 else entry[:80] + "..."
        relative = PurePosixPath(entry.replace("\\", "/"))
        if not entry.strip() or relative.is_absolute() or ".." in relative.parts:
            problems.append(
                Problem(
                    "policy.tests_path",
                    f"the test directory {shown!r} must be a path relative to the policy "
                    "file, inside its directory (e.g. policy-tests/)",
                    line,
                    col,
                )
            )
            continue
        directory = base / relative
        if not directory.is_dir():
            problems.append(
                Problem(
                    "policy.tests_missing",
                    f"the test directory {shown!r} does not exist next to the policy file "
                    f"(looked for {directory}); the cases must be saved with the policy",
                    line,
                    col,
                )
            )
            continue
        dirs.append(directory)
    return dirs, problems


def _run_own_cases(
    source: PolicySource, compiled: CompiledPolicy, base: Path
) -> tuple[list[Problem], int]:
    settings = source.policy.settings
    if not settings.require_tests:
        return [], 0
    line, col = source.tests_at
    if not settings.tests:
        return [
            Problem(
                "policy.tests_required",
                "require_tests is on but the policy names no test cases: list their "
                "directory under settings.tests (e.g. tests: [policy-tests/]), or set "
                "settings.require_tests: false",
                line,
                col,
            )
        ], 0
    dirs, problems = case_dirs(source, base)
    if problems:
        return problems, 0
    results: list[CaseResult] = []
    for directory in dirs:
        results.extend(run_cases(compiled, directory))
        if len(results) > MAX_CASE_RESULTS:
            return [
                Problem(
                    "policy.tests_too_many",
                    f"the test directories hold more than {MAX_CASE_RESULTS} cases",
                    line,
                    col,
                )
            ], 0
    if not results:
        named = ", ".join(source.policy.settings.tests)
        return [
            Problem(
                "policy.tests_empty",
                f"require_tests is on but there are no cases in {named}",
                line,
                col,
            )
        ], 0
    failed = [
        Problem(
            "policy.test_failed",
            f"case {result.name!r} fails with this policy: "
            + "; ".join(f for f in result.failures if not f.startswith("matched: ")),
            result.line,
            result.col,
            file=result.file,
        )
        for result in results
        if not result.passed
    ]
    return failed, len(results) - len(failed)
