"""Tests for gateway/policies/reload.py: swap whole, keep the last good policy, never die."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from gateway.policies.loader import PolicyError
from gateway.policies.reload import PolicyHolder, PolicyLoad
from tests.policies.samples import MINIMAL
from tests.support.gateway import SHIPPED_POLICY, copy_shipped_policy

#: MINIMAL names no test cases; these tests are about swapping, not about cases.
UNTESTED = MINIMAL + "settings:\n  require_tests: false\n"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
LOCATED = re.compile(r"^\S+:\d+:\d+: ")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "policies.yaml"
    file.write_text(UNTESTED)
    return file


def write(path: Path, text: str) -> None:
    """Write and move the modification time on, as a later save would."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_valid_change_is_swapped_in_whole(path: Path) -> None:
    """A valid change replaces the active policy in one step and is reported with what changed."""
    events: list[PolicyLoad] = []
    holder = PolicyHolder(path, on_load=events.append, clock=Clock())
    before = holder.current
    write(path, UNTESTED.replace("source: FCRA", "source: FCRA 1681b"))
    assert holder.check_for_change() is True
    after = holder.current
    assert after is not before
    assert after.version != before.version
    # A request that read the old policy keeps deciding under it, whole.
    assert before.policy.rules[0].source == "FCRA"
    assert [(e.ok, e.version) for e in events] == [(True, before.version), (True, after.version)]
    assert events[1].previous == before.version
    assert events[1].changes == "rules changed: deny-employment"
    assert events[1].file_digest is not None
    assert events[1].file_digest.startswith("sha256:")
    assert holder.status().pending_error is None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda p: write(p, UNTESTED.replace("adapter: klout", "adapter: klot")),
            id="invalid-policy",
        ),
        pytest.param(lambda p: write(p, "purposes: [unclosed\n"), id="yaml-syntax"),
        pytest.param(lambda p: p.unlink(), id="deleted"),
        pytest.param(lambda p: write(p, ""), id="emptied"),
    ],
)
def test_bad_change_keeps_the_last_good_policy(path: Path, damage: object) -> None:
    """An invalid, emptied or deleted file leaves the last good policy active and says why,
    with times in RFC 3339."""
    clock = Clock()
    events: list[PolicyLoad] = []
    holder = PolicyHolder(path, on_load=events.append, clock=clock)
    good = holder.current
    clock.now = 2000.0
    damage(path)  # type: ignore[operator]
    assert holder.check_for_change() is False
    assert holder.current is good
    status = holder.status()
    assert status.version == good.version
    assert status.loaded_at == "1970-01-01T00:16:40.000000Z"
    assert status.pending_since == "1970-01-01T00:33:20.000000Z"
    assert status.pending_error
    assert all(line.startswith(f"{path}:") for line in status.pending_error)
    assert (events[-1].ok, events[-1].version) == (False, good.version)
    # Fixing the file clears the pending error.
    write(path, UNTESTED)
    assert holder.check_for_change() is True
    assert holder.status().pending_error is None
    assert holder.current.version == good.version


# The saves that used to kill the watcher (PyYAML's ConstructorError, Python's
# ValueError): each is now a refusal at its line and column.
TAGGED = [
    pytest.param("zzz: !foo bar\n", "'!foo' is not allowed", id="unknown-tag"),
    pytest.param("zzz: !!int abc\n", "cannot be read as !!int", id="int-tag-on-text"),
    pytest.param("zzz: !!float abc\n", "cannot be read as !!float", id="float-tag-on-text"),
    pytest.param("zzz: " + "9" * 100_000 + "\n", "100000 digits", id="100000-digit-integer"),
    pytest.param("zzz: !!set {a, b}\n", "'!!set' is not allowed", id="set-tag"),
    pytest.param("zzz: !!omap [a: 1]\n", "'!!omap' is not allowed", id="omap-tag"),
    pytest.param(
        "zzz: !!python/object/apply:os.system [id]\n", "is not allowed", id="python-object-tag"
    ),
    pytest.param("zzz: !!binary a\n", "cannot be read as !!binary", id="bad-binary"),
    pytest.param("zzz: !!timestamp 2026-13-45\n", "zzz", id="bad-timestamp"),
    pytest.param("? !foo k\n: v\n", "'!foo' is not allowed", id="tagged-key"),
]


@pytest.mark.parametrize(("tail", "expected"), TAGGED)
def test_watcher_survives_every_yaml_tag_error(path: Path, tail: str, expected: str) -> None:
    """A save with a bad YAML tag is refused with FILE:LINE:COL, the watcher keeps
    running, and the next good save goes live."""
    events: list[PolicyLoad] = []

    async def scenario() -> None:
        holder = PolicyHolder(path, on_load=events.append, interval=0.01)
        good = holder.current.version
        task = holder.start()
        write(path, UNTESTED + tail)
        for _ in range(300):
            await asyncio.sleep(0.01)
            if holder.pending_error:
                break
        assert holder.pending_error, "the bad save was not noticed"
        assert not task.done(), "the watcher died"
        assert holder.current.version == good
        assert any(expected in line for line in holder.pending_error), holder.pending_error
        assert all(LOCATED.match(line) for line in holder.pending_error)
        assert events[-1].ok is False
        # The watcher is still alive: a good save goes live.
        write(path, UNTESTED.replace("source: FCRA", "source: FCRA 1681b"))
        for _ in range(300):
            await asyncio.sleep(0.01)
            if holder.current.version != good:
                break
        assert holder.current.version != good
        assert holder.status().pending_error is None
        await holder.stop()

    asyncio.run(scenario())


def test_a_failing_load_hook_does_not_stop_reloads(path: Path) -> None:
    """The hook that writes the audit record may fail; the reload is not affected."""
    calls: list[PolicyLoad] = []

    def hook(load: PolicyLoad) -> None:
        calls.append(load)
        raise RuntimeError("the audit store is down")

    holder = PolicyHolder(path, on_load=hook)
    write(path, UNTESTED.replace("source: FCRA", "source: other"))
    assert holder.check_for_change() is True
    assert len(calls) == 2


def test_unchanged_file_is_not_reloaded(path: Path) -> None:
    """Polling an unchanged or merely touched file does nothing."""
    events: list[PolicyLoad] = []
    holder = PolicyHolder(path, on_load=events.append)
    assert holder.check_for_change() is None
    write(path, UNTESTED)  # same bytes, new modification time
    assert holder.check_for_change() is None
    assert len(events) == 1


def test_invalid_file_at_start_raises(tmp_path: Path) -> None:
    """There is nothing to keep at start-up: an invalid file is an error."""
    path = tmp_path / "policies.yaml"
    path.write_text("purposes: {}\n")
    events: list[PolicyLoad] = []
    with pytest.raises(PolicyError):
        PolicyHolder(path, on_load=events.append)
    assert (events[0].ok, events[0].version) == (False, None)


def test_watcher_reloads_in_the_background(path: Path) -> None:
    """The watcher task notices a change within its interval and can be stopped."""

    async def scenario() -> None:
        holder = PolicyHolder(path, interval=0.01)
        before = holder.current.version
        task = holder.start()
        assert holder.start() is task
        write(path, UNTESTED.replace("source: FCRA", "source: changed"))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if holder.current.version != before:
                break
        await holder.stop()
        assert holder.current.version != before
        assert task.done()

    asyncio.run(scenario())


# -- require_tests ----------------------------------------------------------------------


def _without_rule(text: str, rule_id: str) -> str:
    start = text.index(f"  - id: {rule_id}\n")
    end = text.index("\n  - id: ", start + 1) + 1
    return text[:start] + text[end:]


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    return copy_shipped_policy(tmp_path)


def test_removing_a_rule_its_cases_need_is_refused(shipped: Path) -> None:
    """Deleting coarsen-support-desk while its cases still expect it keeps the last good
    policy, and the failing cases are shown with their file and line."""
    events: list[PolicyLoad] = []
    holder = PolicyHolder(shipped, on_load=events.append)
    good = holder.current
    write(shipped, _without_rule(SHIPPED_POLICY.read_text(), "coarsen-support-desk"))
    assert holder.check_for_change() is False
    assert holder.current is good
    status = holder.status()
    assert status.failing_cases is not None
    assert len(status.failing_cases) == 2
    assert all("policy-tests/support.yaml:" in line for line in status.failing_cases)
    assert "the support desk sees the band only" in status.failing_cases[0]
    assert status.pending_error == status.failing_cases
    refused = events[-1]
    assert (refused.ok, refused.version) == (False, good.version)
    assert refused.failing_cases == tuple(status.failing_cases)


def test_removing_a_rule_with_its_cases_in_the_same_save_goes_live(shipped: Path) -> None:
    """A change that removes a rule and updates its cases in the same save goes live."""
    holder = PolicyHolder(shipped, on_load=None)
    cases = shipped.parent / "policy-tests" / "support.yaml"
    cases.write_text(
        cases.read_text()
        .replace("coarsen-support-desk, ", "")
        .replace("coarsen: true", "coarsen: false")
    )
    write(shipped, _without_rule(SHIPPED_POLICY.read_text(), "coarsen-support-desk"))
    assert holder.check_for_change() is True
    assert "coarsen-support-desk" not in {r.id for r in holder.current.rules}
    assert holder.status().failing_cases is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param("  tests: []\n", "names no test cases", id="no-cases-named"),
        pytest.param("  tests: [../elsewhere]\n", "inside its directory", id="parent-directory"),
        pytest.param("  tests: [/etc]\n", "inside its directory", id="absolute-path"),
        pytest.param("  tests: [nowhere/]\n", "does not exist", id="missing-directory"),
    ],
)
def test_a_policy_without_its_cases_is_refused(shipped: Path, settings: str, message: str) -> None:
    """With require_tests on, a file that names no cases, or cases outside its own
    directory, or that are not there, does not go live."""
    holder = PolicyHolder(shipped)
    good = holder.current
    text = SHIPPED_POLICY.read_text().replace("  tests: [policy-tests/]\n", settings)
    write(shipped, text.replace("source: FCRA", "source: FCRA 1681b"))
    assert holder.check_for_change() is False
    assert holder.current is good
    assert holder.pending_error is not None
    assert any(message in line for line in holder.pending_error), holder.pending_error


def test_objections_never_wait_on_tests(shipped: Path) -> None:
    """An objection saved together with a change whose cases fail takes effect at once;
    the rest of the change is refused."""
    events: list[PolicyLoad] = []
    holder = PolicyHolder(shipped, on_load=events.append)
    good = holder.current
    pseudonym = "hmac-sha256:" + "ab" * 32
    text = _without_rule(SHIPPED_POLICY.read_text(), "coarsen-support-desk")
    write(shipped, text.replace("objections: []", f"objections: ['{pseudonym}']"))
    assert holder.check_for_change() is False
    assert pseudonym in holder.current.objections
    assert {r.id for r in holder.current.rules} == {r.id for r in good.rules}
    assert holder.status().failing_cases
    objection, refusal = events[-2:]
    assert objection.ok
    assert objection.objections_only
    assert objection.changes == "objections: 0 -> 1"
    assert refusal.ok is False


def test_an_objection_alone_goes_live_without_running_cases(shipped: Path) -> None:
    """A save that only adds an objection goes live even while the cases are broken."""
    events: list[PolicyLoad] = []
    holder = PolicyHolder(shipped, on_load=events.append)
    (shipped.parent / "policy-tests" / "support.yaml").write_text("cases: [")
    pseudonym = "hmac-sha256:" + "cd" * 32
    write(
        shipped,
        SHIPPED_POLICY.read_text().replace("objections: []", f"objections: ['{pseudonym}']"),
    )
    assert holder.check_for_change() is True
    assert pseudonym in holder.current.objections
    assert events[-1].objections_only
