"""A :class:`~gateway.supervisor.Supervisor` run in a process of its own, with
children that write what they do to a journal: ``python -m tests.support.supervised
SCENARIO JOURNAL``. The supervisor forks, so it must not run inside pytest's process
(which may hold threads)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from gateway.supervisor import STARTUP_FAILURE, Supervisor


def main(scenario: str, journal: Path) -> int:
    def note(event: str) -> None:
        with journal.open("a") as f:
            f.write(f"{time.monotonic():.3f} {os.getpid()} {event}\n")

    def serve_until_term(role: str) -> int:
        stopped = False

        def on_term(signum: int, frame: object) -> None:
            nonlocal stopped
            stopped = True

        signal.signal(signal.SIGTERM, on_term)
        note(f"start {role}")
        while not stopped:
            time.sleep(0.01)
        time.sleep(0.2 if role == "worker" else 0)  # a worker drains its connections
        note(f"stop {role}")
        return 0

    def crashing_worker() -> int:
        note("start worker")
        return 1

    def broken_worker() -> int:
        note("start worker")
        return STARTUP_FAILURE

    bodies = {
        "serve": lambda: serve_until_term("worker"),
        "crash": crashing_worker,
        "broken": broken_worker,
    }
    supervisor = Supervisor(2, bodies[scenario], lambda: serve_until_term("sequencer"))
    ok = supervisor.run()
    note(f"supervisor {'ok' if ok else 'failed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
