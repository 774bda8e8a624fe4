"""Tests for gateway/policies/reload.py: swap whole, keep the last good policy."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.policies.loader import PolicyError
from gateway.policies.reload import PolicyHolder
from tests.policies.samples import MINIMAL

Event = tuple[str | None, bool, tuple[str, ...]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "policies.yaml"
    file.write_text(MINIMAL)
    return file


def write(path: Path, text: str) -> None:
    """Write and move the modification time on, as a later save would."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_valid_change_is_swapped_in_whole(path: Path) -> None:
    """A valid change replaces the active policy in one step and is reported."""
    events: list[Event] = []
    holder = PolicyHolder(path, on_load=lambda *e: events.append(e), clock=Clock())
    before = holder.current
    write(path, MINIMAL.replace("source: FCRA", "source: FCRA 1681b"))
    assert holder.check_for_change() is True
    after = holder.current
    assert after is not before
    assert after.version != before.version
    # A request that read the old policy keeps deciding under it, whole.
    assert before.policy.rules[0].source == "FCRA"
    assert events == [(before.version, True, ()), (after.version, True, ())]
    assert holder.status().pending_error is None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda p: write(p, MINIMAL.replace("adapter: klout", "adapter: klot")),
            id="invalid-policy",
        ),
        pytest.param(lambda p: write(p, "purposes: [unclosed\n"), id="yaml-syntax"),
        pytest.param(lambda p: p.unlink(), id="deleted"),
        pytest.param(lambda p: write(p, ""), id="emptied"),
    ],
)
def test_bad_change_keeps_the_last_good_policy(path: Path, damage: object) -> None:
    """An invalid, emptied or deleted file leaves the last good policy active and says why."""
    clock = Clock()
    events: list[Event] = []
    holder = PolicyHolder(path, on_load=lambda *e: events.append(e), clock=clock)
    good = holder.current
    clock.now = 2000.0
    damage(path)  # type: ignore[operator]
    assert holder.check_for_change() is False
    assert holder.current is good
    status = holder.status()
    assert status.version == good.version
    assert status.loaded_at == 1000.0
    assert status.pending_since == 2000.0
    assert status.pending_error
    assert all(str(path) in line for line in status.pending_error)
    assert events[-1][:2] == (good.version, False)
    # Fixing the file clears the pending error.
    write(path, MINIMAL)
    assert holder.check_for_change() is True
    assert holder.status().pending_error is None
    assert holder.current.version == good.version


def test_unchanged_file_is_not_reloaded(path: Path) -> None:
    """Polling an unchanged or merely touched file does nothing."""
    events: list[Event] = []
    holder = PolicyHolder(path, on_load=lambda *e: events.append(e))
    assert holder.check_for_change() is None
    write(path, MINIMAL)  # same bytes, new modification time
    assert holder.check_for_change() is None
    assert len(events) == 1


def test_invalid_file_at_start_raises(tmp_path: Path) -> None:
    """There is nothing to keep at start-up: an invalid file is an error."""
    path = tmp_path / "policies.yaml"
    path.write_text("purposes: {}\n")
    events: list[Event] = []
    with pytest.raises(PolicyError):
        PolicyHolder(path, on_load=lambda *e: events.append(e))
    assert events[0][:2] == (None, False)


def test_watcher_reloads_in_the_background(path: Path) -> None:
    """The watcher task notices a change within its interval and can be stopped."""

    async def scenario() -> None:
        holder = PolicyHolder(path, interval=0.01)
        before = holder.current.version
        task = holder.start()
        assert holder.start() is task
        write(path, MINIMAL.replace("source: FCRA", "source: changed"))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if holder.current.version != before:
                break
        await holder.stop()
        assert holder.current.version != before
        assert task.done()

    asyncio.run(scenario())
