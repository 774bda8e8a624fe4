"""The parent of ``gateway serve --workers N``: it forks, restarts and stops its
children in order (:mod:`gateway.supervisor`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.support import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _start(scenario: str, journal: Path) -> subprocess.Popen[bytes]:
    with (journal.parent / "stderr").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.supervised", scenario, str(journal)],
            cwd=ROOT,
            stderr=stderr,
        )


def _stderr(journal: Path) -> str:
    return (journal.parent / "stderr").read_text()


def _events(journal: Path) -> list[tuple[float, int, str]]:
    if not journal.exists():
        return []
    out = []
    for line in journal.read_text().splitlines():
        at, pid, event = line.split(" ", 2)
        out.append((float(at), int(pid), event))
    return out


def _count(journal: Path, event: str) -> int:
    return sum(e == event for _, _, e in _events(journal))


def test_the_sequencer_stops_after_every_worker(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    process = _start("serve", journal)
    try:
        wait_for(lambda: _count(journal, "start worker") == 2, 10, "two workers")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    events = [e for _, _, e in _events(journal)]
    assert events.count("start sequencer") == 1
    assert events[-2:] == ["stop sequencer", "supervisor ok"]
    assert events.count("stop worker") == 2


def test_a_worker_that_dies_is_restarted_at_most_once_a_second(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    process = _start("crash", journal)
    try:
        time.sleep(2.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    starts = [at for at, _, e in _events(journal) if e == "start worker"]
    # Two workers, each started at 0 and then about once a second: 2 × 3 in 2.5 s.
    assert 4 <= len(starts) <= 8, starts
    stderr = _stderr(journal)
    assert "the worker (process" in stderr
    assert "ended with exit code 1; restarting it" in stderr


def test_a_worker_that_cannot_start_stops_everything(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    process = _start("broken", journal)
    try:
        assert process.wait(timeout=20) == 1
    finally:
        process.kill()
    events = [e for _, _, e in _events(journal)]
    assert events.count("start worker") <= 2  # never restarted
    assert events[-2:] == ["stop sequencer", "supervisor failed"]
    stderr = _stderr(journal)
    assert "a worker could not start" in stderr


def test_process_names_are_what_ps_shows() -> None:
    script = (
        "import pathlib, sys; from gateway.supervisor import set_process_name; "
        "set_process_name('gateway-worker-and-more'); "
        "sys.stdout.write(pathlib.Path('/proc/self/comm').read_text())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out == "gateway-worker-\n"  # the kernel keeps 15 bytes
