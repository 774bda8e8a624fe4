"""The parent process of ``gateway serve`` when it runs several processes.

With ``--workers N`` (or ``--audit-sequencer process``) the parent imports the
gateway once, then **forks** the audit sequencer and the workers from itself. Forked
children share the parent's pages for the interpreter, the libraries and the
gateway's code until one of them writes to a page, so N workers cost far less
memory than N interpreters started afresh (which is what uvicorn's own supervisor
does: it spawns). The parent then only watches: it restarts a worker or the
sequencer that died, and stops them in order (workers first, the sequencer last, so
that every record a worker sends has a writer).

The parent stays single-threaded, so that a fork never copies a lock another thread
held. Children set their process name (``/proc/PID/comm``, shown by ``ps -o comm``
and ``top``): ``gateway-worker`` and ``gateway-seq``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

__all__ = ["SEQUENCER_NAME", "STARTUP_FAILURE", "WORKER_NAME", "Supervisor"]

log = logging.getLogger("gateway")

WORKER_NAME = "gateway-worker"
SEQUENCER_NAME = "gateway-seq"
STARTUP_FAILURE = 3  # uvicorn's exit code for an app that could not start
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1


@dataclass
class _Child:
    role: str  # "worker" or "sequencer"
    name: str  # the process name it sets
    body: Callable[[], int]  # runs in the child; its return value is the exit code
    pid: int = 0
    started: float = 0.0


class Supervisor:
    """Fork ``workers`` serving processes (each runs ``serve_worker``) and, when
    ``sequencer`` is given, the audit sequencer before them; keep them running until
    SIGINT or SIGTERM.

    A worker that exits with :data:`STARTUP_FAILURE` (the app could not start: a
    broken policy, an unreadable key) stops the whole gateway, since its
    replacement would fail the same way. Any other exit is restarted, at most once a
    second per process.
    """

    def __init__(
        self,
        workers: int,
        serve_worker: Callable[[], int],
        sequencer: Callable[[], int] | None = None,
        *,
        worker_stop_timeout: float = 30.0,
        sequencer_stop_timeout: float = 15.0,
        poll: float = 0.2,
    ) -> None:
        self._sequencer = _Child("sequencer", SEQUENCER_NAME, sequencer) if sequencer else None
        self._workers = [_Child("worker", WORKER_NAME, serve_worker) for _ in range(workers)]
        self._worker_stop_timeout = worker_stop_timeout
        self._sequencer_stop_timeout = sequencer_stop_timeout
        self._poll = poll
        self._stopping = False
        self._failed = False

    def run(self) -> bool:
        """Serve until asked to stop; False when a worker could not start."""
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:  # pragma: no cover - nothing in the gateway starts one before serve
            log.warning("forking workers while other threads run (%s)", ", ".join(others))
        previous = {sig: signal.signal(sig, self._on_stop) for sig in _STOP_SIGNALS}
        try:
            # Objects alive now are the shared image: keep the collector of every
            # child from writing to their pages (a write copies the page).
            gc.collect()
            gc.freeze()
            if self._sequencer is not None:
                self._start(self._sequencer)
            for worker in self._workers:
                self._start(worker)
            while not self._stopping:
                time.sleep(self._poll)
                self._reap()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            gc.unfreeze()
        return not self._failed

    # -- internals ----------------------------------------------------------------------

    def _children(self) -> list[_Child]:
        return ([self._sequencer] if self._sequencer else []) + self._workers

    def _on_stop(self, signum: int, frame: object) -> None:
        if not self._stopping:
            log.info("received %s; stopping", signal.Signals(signum).name)
        self._stopping = True

    def _start(self, child: _Child) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; covered by the serve tests
            _run_child(child, parent)
        child.pid, child.started = pid, time.monotonic()
        log.debug("started %s %d", child.role, pid)

    def _reap(self) -> None:
        for child in self._children():
            if child.pid:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
                if pid == 0:
                    continue  # running
                child.pid = 0
                code = os.waitstatus_to_exitcode(status)
                if self._stopping:
                    return
                if child.role == "worker" and code == STARTUP_FAILURE:
                    log.error("a worker could not start (the log above says why); stopping")
                    self._failed = self._stopping = True
                    return
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                log.error("the %s (process %d) ended with %s; restarting it", child.role, pid, how)
            if not self._stopping and time.monotonic() - child.started >= 1.0:
                self._start(child)  # at once, or a second after a start that died quickly

    def _stop_all(self) -> None:
        self._stopping = True
        self._stop(self._workers, self._worker_stop_timeout)
        if self._sequencer is not None:  # last: the workers' records are all in
            self._stop([self._sequencer], self._sequencer_stop_timeout)

    def _stop(self, children: list[_Child], timeout: float) -> None:
        for child in children:
            if child.pid:
                _signal(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            while child.pid:
                pid, _ = os.waitpid(child.pid, os.WNOHANG)
                if pid:
                    child.pid = 0
                elif time.monotonic() >= deadline:
                    log.warning(
                        "the %s (process %d) did not stop; killing it", child.role, child.pid
                    )
                    _signal(child.pid, signal.SIGKILL)
                    os.waitpid(child.pid, 0)
                    child.pid = 0
                else:
                    time.sleep(0.05)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile; waitpid reaps it
        os.kill(pid, sig)


def _run_child(child: _Child, parent: int) -> NoReturn:  # pragma: no cover - in the child
    code = 1
    try:
        for sig in _STOP_SIGNALS:  # the parent's handlers: uvicorn installs its own
            signal.signal(sig, signal.SIG_DFL)
        set_process_name(child.name)
        if child.role == "worker":
            # A parent killed with -9 cannot stop its workers: the kernel sends them
            # SIGTERM instead, so no orphan keeps serving on the port. (The sequencer
            # watches for that itself, and stops after the workers have drained.)
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # it died before the line above
                os._exit(0)
        code = child.body()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("the %s failed", child.role)
        code = 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def set_process_name(name: str) -> None:
    """Name this process in ``/proc/PID/comm`` (Linux; 15 bytes at most), so that
    ``ps -o pid,comm``, ``top`` and ``pgrep -x`` tell the gateway's processes apart.
    Elsewhere this does nothing."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def _prctl(option: int, value: int | bytes) -> None:
    if sys.platform.startswith("linux"):  # the interpreter links the C library's prctl
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
