"""Instructions per lookup in the gateway's worker and sequencer, counted by callgrind.

    .venv/bin/python bench/instructions.py                          # this checkout
    .venv/bin/python bench/instructions.py --gateway-src /tmp/base   # another build
    .venv/bin/python bench/instructions.py --lookups 4000 --repeat 2
    .venv/bin/python bench/instructions.py --reference              # row d1, for scale

On this shared VM, req/s drifts by 20% from one minute to the next, so a change
worth a few per cent cannot be seen in ``loadtest.py rows``. callgrind counts the
instructions a process executes, whatever else the machine does; the same build
gives the same count to within a few per cent (timing still moves a little: how
many requests one event-loop turn handles, how large a group commit is).

The gateway is served as ``gateway serve --workers 1`` (a worker and a sequencer
process) under ``valgrind --tool=callgrind``, with the loadtest's nginx upstream
and raised-limits policy. After a warm-up that asks for every id once, each
process counts two windows, opened and closed by SIGUSR2 through a
``sitecustomize`` that calls callgrind's client requests (``CALLGRIND_ZERO_STATS``,
``CALLGRIND_DUMP_STATS``; a small C helper built here with gcc and valgrind's
headers): an idle one, for the instructions the process spends per second with no
traffic (the identity store's revision poll, the sequencer's stats), and one
around ``--lookups`` lookups from 16 keep-alive connections. The report is the
load window minus the idle rate over its length, per lookup. Counts are user
space only: system calls and the kernel's work are not in them.

Needs Debian's ``valgrind`` (it ships ``callgrind.h``), gcc and nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadtest  # noqa: E402  # the harness's upstream, policy and helpers

CONNECTIONS = 16
WARMUP = 1400  # every one of the 1,000 ids once, then some
IDLE_SECONDS = 8.0

_HELPER_C = """
#include <valgrind/callgrind.h>
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(void) { CALLGRIND_DUMP_STATS_AT("window"); }
"""

# Loaded by every Python process of the run (PYTHONPATH): SIGUSR2 opens a window
# (zero the counters), the next SIGUSR2 closes it (dump them), and so on.
_SITECUSTOMIZE = """
import ctypes, os, signal

_lib = ctypes.CDLL(os.environ["GATEWAY_CALLGRIND_HELPER"])
_windows = [0]


def _toggle(signum, frame):
    if _windows[0] % 2 == 0:
        _lib.cg_zero()
    else:
        _lib.cg_dump()
    _windows[0] += 1


signal.signal(signal.SIGUSR2, _toggle)
"""


def build_helper(tmp: Path) -> Path:
    source = tmp / "cgctl.c"
    source.write_text(_HELPER_C)
    library = tmp / "libcgctl.so"
    done = subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            "instructions: cannot build the callgrind helper (needs gcc and valgrind's "
            f"callgrind.h, Debian's valgrind package):\n{done.stderr}"
        )
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return library


async def _client(port: int, count: int, first: int, path: tuple[str, str]) -> None:
    reader, writer = await asyncio.open_connection(loadtest.HOST, port)
    prefix, suffix = path
    # The gateway answers every id 200 (a missing person gets the neutral score);
    # the passthrough forwards the upstream's 404 for ids ending in 0.
    expected = (
        (b"HTTP/1.1 200",) if path == loadtest.GATEWAY_PATH else (b"HTTP/1.1 200", b"HTTP/1.1 404")
    )
    try:
        for i in range(count):
            target = f"{prefix}{(first + i) % 1000 + 1}{suffix}"
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {loadtest.HOST}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(expected):
                raise SystemExit(f"instructions: the server answered {head[:60]!r}")
            length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
            if length is None:
                raise SystemExit("instructions: an answer without Content-Length")
            await reader.readexactly(int(length.group(1)))
    finally:
        writer.close()


def load(port: int, total: int, path: tuple[str, str] = loadtest.GATEWAY_PATH) -> None:
    per = total // CONNECTIONS

    async def run() -> None:
        await asyncio.gather(*(_client(port, per, k * per, path) for k in range(CONNECTIONS)))

    asyncio.run(run())


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def window_totals(out_dir: Path, pid: int) -> dict[int, int]:
    """Instructions counted in each dumped window of ``pid`` (dump number -> Ir)."""
    totals = {}
    for path in out_dir.glob(f"out.{pid}.*"):
        for line in path.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                totals[int(path.name.rsplit(".", 1)[1])] = int(line.split()[1])
    return totals


def _gateway_argv(port: int, upstream_port: int, tmp: Path) -> list[str]:
    return [
        *("-m", "gateway", "serve", "--demo", "--host", loadtest.HOST, "--port", str(port)),
        *("--upstream", f"klout=http://{loadtest.HOST}:{upstream_port}"),
        *("--policies", str(loadtest.raised_limits_policy(tmp))),
        *("--data-dir", str(tmp / "gateway"), "--workers", "1", "--audit-sequencer", "process"),
    ]


def _reference_argv(port: int) -> list[str]:
    """Row d1 of the loadtest: the bare Litestar handler + aiohttp passthrough, one
    uvicorn process (``--workers 1`` serves in the process it starts in)."""
    return [
        *("-m", "uvicorn", "passthrough:create_app", "--factory", "--app-dir", str(BENCH)),
        *("--host", loadtest.HOST, "--port", str(port), "--workers", "1"),
        *("--no-access-log", "--log-level", "warning"),
    ]


def measure(
    src: Path, lookups: int, tmp: Path, library: Path, *, reference: bool = False
) -> dict[str, float]:
    """Instructions per lookup of each process: the gateway's worker and sequencer,
    or, with ``reference``, the passthrough's one process."""
    out_dir = tmp / "callgrind"
    out_dir.mkdir()
    logs = tmp / "logs"
    logs.mkdir()
    path = loadtest.DIRECT_PATH if reference else loadtest.GATEWAY_PATH
    with loadtest.upstream_nginx(tmp, logs) as upstream_port:
        port = loadtest.free_port()
        env = dict(
            os.environ,
            PYTHONPATH=f"{src}:{tmp / 'site'}",
            GATEWAY_CALLGRIND_HELPER=str(library),
        )
        if reference:
            env.update(
                BENCH_UPSTREAM=f"http://{loadtest.HOST}:{upstream_port}",
                BENCH_PASSTHROUGH_MODE="handler",
            )
            argv, ready = _reference_argv(port), f"{path[0]}1{path[1]}"
        else:
            argv, ready = _gateway_argv(port, upstream_port, tmp), "/readyz"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out_dir}/out.%p",
            str(loadtest.BIN / "python"),
            *argv,
        ]
        with (logs / "server.log").open("w") as log:
            server = subprocess.Popen(argv, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if loadtest.http_get(f"http://{loadtest.HOST}:{port}{ready}", 10)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"instructions: the server did not start; see {logs}")
                time.sleep(1)
            load(port, WARMUP, path)
            if reference:  # valgrind runs the tool in the process it was started as
                pids = {"server": [server.pid]}
            else:
                pids = {
                    "worker": pids_named("gateway-worker"),
                    "sequencer": pids_named("gateway-seq"),
                }

            def toggle() -> None:
                for group in pids.values():
                    for pid in group:
                        os.kill(pid, signal.SIGUSR2)

            toggle()
            time.sleep(1)
            idle = time.monotonic()
            time.sleep(IDLE_SECONDS)
            toggle()
            idle = time.monotonic() - idle + 1
            time.sleep(2)
            toggle()
            started = time.monotonic()
            load(port, lookups, path)
            toggle()
            busy = time.monotonic() - started
            time.sleep(3)  # the dumps are written when each process next runs
            result = {"seconds": busy}
            for role, group in pids.items():
                idle_ir = load_ir = 0
                for pid in group:
                    windows = window_totals(out_dir, pid)
                    if set(windows) != {1, 2}:
                        raise SystemExit(f"instructions: {role} {pid} dumped {sorted(windows)}")
                    idle_ir += windows[1]
                    load_ir += windows[2]
                rate = idle_ir / idle
                result[f"{role}_per_lookup"] = (load_ir - rate * busy) / lookups
                result[f"{role}_raw_per_lookup"] = load_ir / lookups
                result[f"{role}_idle_per_second"] = rate
            return result
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway-src", type=Path, default=loadtest.ROOT, help="a checkout")
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="runs, each a fresh gateway")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="count the loadtest's row d1 (bare Litestar + aiohttp passthrough) instead",
    )
    args = parser.parse_args()
    missing = [tool for tool in ("valgrind", "gcc", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"instructions: {', '.join(missing)} not found on PATH", file=sys.stderr)
        return 2
    src = args.gateway_src.resolve()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="instructions-") as name:
            tmp = Path(name)
            library = build_helper(tmp)
            result = measure(src, args.lookups, tmp, library, reference=args.reference)
        runs.append(result)
        roles = ["server"] if args.reference else ["worker", "sequencer"]
        what = "passthrough (d1)" if args.reference else str(src)
        counts = " and ".join(f"{role} {result[f'{role}_per_lookup']:,.0f}" for role in roles)
        raw = " and ".join(f"{result[f'{role}_raw_per_lookup']:,.0f}" for role in roles)
        idle = " and ".join(f"{result[f'{role}_idle_per_second'] / 1e6:.1f}M" for role in roles)
        print(
            f"{what}: {counts} instructions per lookup (before the idle rate is taken off: "
            f"{raw}; idle {idle} per second; {args.lookups} lookups in "
            f"{result['seconds']:.1f} s under valgrind)",
            flush=True,
        )
    if len(runs) > 1:
        roles = ["server"] if args.reference else ["worker", "sequencer"]
        medians = ", ".join(
            f"{role} {statistics.median(r[f'{role}_per_lookup'] for r in runs):,.0f}"
            for role in roles
        )
        print(f"median of {len(runs)}: {medians}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
