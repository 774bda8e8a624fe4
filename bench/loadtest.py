"""HTTP load harness: nginx as a Klout-shaped upstream, wrk as the load, pinned servers.

Three commands (``bench/README.md`` has the method and the results)::

    .venv/bin/python bench/loadtest.py rows                  # a, b, d1, d1m, d2, g1, g1-pg, g2
    .venv/bin/python bench/loadtest.py soak --duration 600   # peak RSS, then half capacity
    .venv/bin/python bench/loadtest.py profile --seconds 10  # py-spy on the 1-worker gateway

Everything listens on 127.0.0.1 only and every process the harness starts is
stopped by its pid when its row ends (``Server.stop``). Pinning follows the
baseline (``reference/performance.md``): wrk and the upstream on CPU 0, a server
under test with one worker on CPU 1, a server with two workers on both.

The gateway runs with a copy of ``policies.yaml`` whose call limits are raised
(``limit-klout-terms`` and the klout ``terms``: 10^9 calls/s, 10^12 calls/day),
written to the run's temporary directory; every other rule is the shipped one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent  # run with the project's .venv/bin/python
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
LOAD_CPU = "0"  # wrk, the nginx upstream, py-spy
SERVER_CPU = "1"  # a one-worker server under test
ALL_CPUS = "0,1"  # a two-worker server under test

# The Klout v2 /score body of the demo's alice_example (gateway/demo/upstream.py:
# score, scoreDelta and the decile bucket), and the v2 404 for an unknown id.
SCORE_BODY = (
    '{"score":71.3,"scoreDelta":{"dayChange":0.11,"weekChange":0.42,"monthChange":1.87},'
    '"bucket":"70-79"}'
)
NOT_FOUND_BODY = '{"error":404,"description":"Resource or user not found."}'
CONTENT_TYPE = "application/json; charset=utf-8"
GATEWAY_PATH = ("/klout/v2/user.json/", "/score?key=demo-crm-key")
DIRECT_PATH = ("/v2/user.json/", "/score")
RAISED_PER_SECOND = "1000000000"
RAISED_PER_DAY = "1000000000000"
INSTALL_HINT = "install them with: apt-get update && apt-get install -y nginx wrk"


class HarnessError(Exception):
    """A precondition failed; the message says what to do."""


# -- tools and files -------------------------------------------------------------------------


def tool(name: str) -> str:
    """The venv's copy of a tool if it has one (py-spy), else the one on PATH."""
    local = BIN / name
    return str(local) if local.exists() else name


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(tool(name)) is None]
    if "py-spy" in missing:
        raise HarnessError(f"py-spy not found; install it with: {BIN}/pip install py-spy")
    if missing:
        raise HarnessError(f"{', '.join(missing)} not found on PATH; {INSTALL_HINT}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def nginx_common(tmp: Path, name: str) -> str:
    """Top of an nginx.conf that keeps every file nginx writes inside ``tmp``."""
    return f"""
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fastcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
"""


def write_upstream_conf(tmp: Path, port: int) -> Path:
    """nginx as Klout v2: ids ending in 0 (10% of 1..1000) get the 404, others the score."""
    conf = nginx_common(tmp, "upstream") + (
        f"  server {{\n"
        f"    listen {HOST}:{port};\n"
        f"    default_type '{CONTENT_TYPE}';\n"
        f"    location ~ ^/v2/user\\.json/[0-9]*0/score$ {{ return 404 '{NOT_FOUND_BODY}'; }}\n"
        f"    location /v2/ {{ return 200 '{SCORE_BODY}'; }}\n"
        f"  }}\n}}\n"
    )
    path = tmp / "upstream.conf"
    path.write_text(conf)
    return path


def write_proxy_conf(tmp: Path, port: int, upstream_port: int) -> Path:
    """nginx as the reverse proxy of row b: proxy_pass with upstream keep-alive."""
    conf = nginx_common(tmp, "proxy") + (
        f"  upstream klout {{ server {HOST}:{upstream_port}; keepalive 128; }}\n"
        f"  server {{\n"
        f"    listen {HOST}:{port};\n"
        f"    location / {{\n"
        f"      proxy_pass http://klout;\n"
        f"      proxy_http_version 1.1;\n"
        f'      proxy_set_header Connection "";\n'
        f"    }}\n"
        f"  }}\n}}\n"
    )
    path = tmp / "proxy.conf"
    path.write_text(conf)
    return path


def write_wrk_script(tmp: Path, *, delay_ms: float | None = None, ids: int = 1000) -> Path:
    """Cycle ids 1..``ids`` over ``prefix .. id .. suffix``; print a JSON summary at the end.

    With more than 1,000 ids each wrk run starts at a random id, so that a measured
    run does not repeat the ids of its warm-up: with ``--ids 1000000`` nearly every
    lookup is the first of its id (the cold traffic of a CRM enriching a list).

    With ``delay_ms`` each connection waits that long after each answer (wrk's
    ``delay()`` takes whole milliseconds, so the fraction is carried over): the
    rate is about connections * 1000 / (delay_ms + latency).
    """
    delay = ""
    if delay_ms is not None:
        delay = f"""
local carry = 0.0
delay = function()
  carry = carry + {delay_ms:.6f}
  local whole = math.floor(carry)
  carry = carry - whole
  return whole
end
"""
    script = (
        """
local prefix, suffix = "/", ""
local counter = 0
local ids = IDS
init = function(args)
  prefix, suffix = args[1], args[2]
  if ids > 1000 then
    math.randomseed(os.time())
    counter = math.random(0, ids - 1)
  end
end
request = function()
  counter = counter % ids + 1
  return wrk.format("GET", prefix .. counter .. suffix)
end
""".replace("IDS", str(ids))
        + delay
        + """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""
    )
    path = tmp / (f"ids-{ids}-delay.lua" if delay_ms is not None else f"ids-{ids}.lua")
    path.write_text(script)
    return path


def raised_limits_policy(tmp: Path) -> Path:
    """A copy of policies.yaml with every calls_per_second/calls_per_day raised."""
    text = (ROOT / "policies.yaml").read_text(encoding="utf-8")
    text, per_second = re.subn(
        r"(calls_per_second:)\s*[0-9.]+", rf"\g<1> {RAISED_PER_SECOND}", text
    )
    text, per_day = re.subn(r"(calls_per_day:)\s*[0-9]+", rf"\g<1> {RAISED_PER_DAY}", text)
    if per_second < 2 or per_day < 2:
        raise HarnessError(
            f"policies.yaml: expected the klout terms and limit-klout-terms to set "
            f"calls_per_second and calls_per_day, found {per_second} and {per_day}"
        )
    path = tmp / "policies.yaml"
    path.write_text(text, encoding="utf-8")
    # The policy names its test cases beside it; it goes live only with them.
    if not (tmp / "policy-tests").exists():
        shutil.copytree(ROOT / "policy-tests", tmp / "policy-tests")
    check = subprocess.run(
        [str(BIN / "gateway"), "policy", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise HarnessError(
            f"the raised-limits policy copy does not load:\n{check.stdout}{check.stderr}"
        )
    return path


# -- processes ---------------------------------------------------------------------------


@dataclass
class Server:
    """A process the harness started (in its own session), stopped by its pid."""

    name: str
    argv: list[str]
    cpus: str
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    stop_signal: int = signal.SIGTERM
    cwd: Path = ROOT
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                ["taskset", "-c", self.cpus, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def pids(self) -> list[int]:
        """This process and its descendants (uvicorn workers, nginx workers)."""
        found = [self.pid]
        queue = [self.pid]
        while queue:
            parent = queue.pop()
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
                for child in map(int, children):
                    found.append(child)
                    queue.append(child)
        return found

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # The session we created holds its workers too; its id is our child's pid.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log else ""
            raise HarnessError(f"{self.name} exited with {self.process.returncode}:\n{tail}")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def wait_ready(server: Server, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        with contextlib.suppress(OSError):
            if http_get(url, timeout=1.0)[0] == 200:
                return
        time.sleep(0.1)
    raise HarnessError(f"{server.name} did not answer 200 on {url} within {timeout:.0f} s")


# -- measurement -------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB from /proc/PID/status (0 if the process is gone)."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    return values


def pss_kb(pid: int) -> int:
    """Proportional set size in kB from /proc/PID/smaps_rollup (0 if gone): pages
    shared between processes count once in a sum over all of them, unlike RSS."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all threads), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def process_role(pid: int) -> str:
    """``"worker "``, ``"sequencer "`` or ``""``: by the name the gateway's forked
    children give themselves, or by the command line of spawned ones (uvicorn's
    workers; ``gateway sequencer``; an older gateway served with --variant-src)."""
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm in ("gateway-worker", "gateway-seq"):
        return "worker " if comm == "gateway-worker" else "sequencer "
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    if b"\x00sequencer\x00" in cmdline:  # `gateway sequencer`, not --audit-sequencer
        return "sequencer "
    return "worker " if b"multiprocessing" in cmdline else ""


def _threads(pids: Sequence[int]) -> Iterator[tuple[str, Path]]:
    """``(label, /proc task dir)`` of every thread: ``main`` for each process's first
    thread, other names without their trailing digits, ``thread`` for an unnamed one,
    prefixed by the process's role (uvicorn ``worker``s, the audit ``sequencer``)."""
    for pid in pids:
        try:
            role = process_role(pid)
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            name = "main" if task.name == str(pid) else re.sub(r"[0-9]+$", "", name)
            name = "thread" if name == comm else name
            yield f"{role}{name}", task


def thread_cpu_seconds(pids: Sequence[int]) -> dict[str, float]:
    """utime and stime per thread label (:func:`_threads`), summed over the processes
    of one role, in seconds: ``{"main user": ..., "worker main sys": ..., ...}``."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for label, task in _threads(pids):
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            for part, value in (("user", fields[11]), ("sys", fields[12])):
                key = f"{label} {part}"
                totals[key] = totals.get(key, 0.0) + int(value) / ticks
    return totals


def thread_switches(pids: Sequence[int]) -> dict[str, int]:
    """Context switches per thread label (:func:`_threads`):
    ``{"worker main voluntary": ..., "worker main forced": ...}``. A process that
    wakes another on the same core pays for it in switches, not in its own CPU time."""
    totals: dict[str, int] = {}
    for label, task in _threads(pids):
        with contextlib.suppress(OSError):
            status = (task / "status").read_text()
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            for part, field in (
                ("voluntary", "voluntary_ctxt_switches"),
                ("forced", "nonvoluntary_ctxt_switches"),
            ):
                key = f"{label} {part}"
                totals[key] = totals.get(key, 0) + int(fields[field])
    return totals


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    result: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if re.fullmatch(r"cpu[0-9]+", name):
            numbers = [int(v) for v in values]
            idle = numbers[3] + numbers[4]
            result[name] = (sum(numbers) - idle, sum(numbers))
    return result


def cpu_busy(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    busy = {}
    for name, (b1, t1) in after.items():
        b0, t0 = before.get(name, (0, 0))
        busy[name] = round((b1 - b0) / max(1, t1 - t0), 3)
    return busy


def wait_quiet(max_wait: float, threshold: float = 0.1) -> dict[str, float]:
    """Wait (up to ``max_wait`` s) for a second in which no CPU is busier than
    ``threshold``: other work on the box (a test run, a build) skews every row.
    Returns the last second's per-CPU busy fractions; the caller records them."""
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_times()
        time.sleep(1.0)
        busy = cpu_busy(before, cpu_times())
        if max(busy.values()) <= threshold or time.monotonic() >= deadline:
            return busy
        print(f"  waiting for a quiet machine (CPU busy {busy})", flush=True)


class RssSampler:
    """Samples the summed VmRSS and PSS of a server's processes every ``interval`` s."""

    def __init__(self, server: Server, interval: float) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, kB)
        self.pss: list[int] = []  # kB, summed over the processes, one per sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = self.server.pids()
            total = sum(proc_status(pid)["VmRSS"] for pid in pids)
            self.samples.append((round(time.monotonic() - self._started, 1), total))
            self.pss.append(sum(pss_kb(pid) for pid in pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_kb(self) -> int:
        return max((kb for _, kb in self.samples), default=0)

    @property
    def peak_pss_kb(self) -> int:
        return max(self.pss, default=0)


def run_pacer(
    base: str, path: tuple[str, str], *, rate: float, seconds: float, every: float = 0.0
) -> dict[str, Any]:
    """``bench/pacer.py`` (an open-loop load at ``rate`` req/s) on the load CPU."""
    argv = [
        "taskset", "-c", LOAD_CPU, str(BIN / "python"), str(BENCH / "pacer.py"),
        base + path[0], path[1], "--rate", f"{rate:g}", "--seconds", f"{seconds:g}",
        "--every", f"{every:g}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PACERJSON ")), None)
    if done.returncode != 0 or line is None:
        raise HarnessError(f"pacer failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(line.removeprefix("PACERJSON "))
    return result


def run_wrk(
    url: str,
    script: Path,
    path: tuple[str, str],
    *,
    seconds: float,
    connections: int,
    timeout: str = "5s",
) -> dict[str, Any]:
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        f"--timeout={timeout}",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *path,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise HarnessError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    errors = result["errors"]
    result["socket_errors"] = errors["connect"] + errors["read"] + errors["write"]
    result["socket_errors"] += errors["timeout"]
    result["non_2xx"] = errors["status"]
    return result


# -- rows --------------------------------------------------------------------------------


@dataclass
class Context:
    tmp: Path
    upstream_port: int
    policy: Path
    database_url: str
    schema: str
    log_dir: Path
    gateway_src: Path = ROOT
    variant_src: Path | None = None  # rows g1v, g2v: the gateway served from this copy

    @classmethod
    def of(cls, tmp: Path, upstream_port: int, log_dir: Path, args: argparse.Namespace) -> Context:
        """The context of one invocation: the raised-limits policy, the command line's
        PostgreSQL and gateway sources."""
        return cls(
            tmp,
            upstream_port,
            raised_limits_policy(tmp),
            args.pg_url,
            args.pg_schema,
            log_dir,
            args.gateway_src.resolve(),
            args.variant_src.resolve() if args.variant_src else None,
        )

    @property
    def upstream_url(self) -> str:
        return f"http://{HOST}:{self.upstream_port}"


@dataclass(frozen=True)
class Row:
    key: str
    setup: str
    path: tuple[str, str]
    start: Callable[[Context, int, Path], Server | None]  # None: the load hits the upstream


def _nginx_proxy(ctx: Context, port: int, run_dir: Path) -> Server:
    conf = write_proxy_conf(run_dir, port, ctx.upstream_port)
    return Server(
        "nginx-proxy",
        ["nginx", "-c", str(conf), "-e", str(run_dir / "proxy.stderr.log")],
        SERVER_CPU,
        log=ctx.log_dir / "nginx-proxy.log",
        stop_signal=signal.SIGQUIT,
    )


def _passthrough(workers: int, mode: str) -> Callable[[Context, int, Path], Server]:
    def start(ctx: Context, port: int, run_dir: Path) -> Server:
        return Server(
            f"passthrough-{mode}-{workers}w",
            [
                str(BIN / "uvicorn"),
                "passthrough:create_app",
                "--factory",
                "--app-dir",
                str(BENCH),
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            SERVER_CPU if workers == 1 else ALL_CPUS,
            env={"BENCH_UPSTREAM": ctx.upstream_url, "BENCH_PASSTHROUGH_MODE": mode},
            log=ctx.log_dir / f"passthrough-{mode}-{workers}w.log",
        )

    return start


def _gateway(
    workers: int, postgres: bool, sequencer: str = "auto", variant: bool = False
) -> Callable[[Context, int, Path], Server]:
    def start(ctx: Context, port: int, run_dir: Path) -> Server:
        src = ctx.gateway_src
        if variant:
            if ctx.variant_src is None:
                raise HarnessError(
                    "rows g1v, g1tv, g2v need --variant-src DIR (a patched gateway/)"
                )
            src = ctx.variant_src
        argv = [
            str(BIN / "python"),
            "-m",
            "gateway",
            "serve",
            "--demo",
            "--host",
            HOST,
            "--port",
            str(port),
            "--upstream",
            f"klout={ctx.upstream_url}",
            "--policies",
            str(ctx.policy),
            "--data-dir",
            str(run_dir / "gateway"),
            "--workers",
            str(workers),
            "--audit-sequencer",
            sequencer,
        ]
        if postgres:
            reset_schema(ctx.database_url, ctx.schema)
            argv += ["--database-url", schema_url(ctx.database_url, ctx.schema)]
        name = (
            f"gateway-{workers}w"
            + ("-pg" if postgres else "")
            + ("-thread" if sequencer == "thread" else "")
            + ("-variant" if variant else "")
        )
        return Server(
            name,
            argv,
            SERVER_CPU if workers == 1 else ALL_CPUS,
            env={"PYTHONPATH": str(src)},
            cwd=src,  # `python -m` puts the working directory first on sys.path
            log=ctx.log_dir / f"{name}.log",
        )

    return start


ROWS: dict[str, Row] = {
    row.key: row
    for row in (
        Row("a", "upstream direct: nginx `return 200` (1 worker)", DIRECT_PATH, lambda *_: None),
        Row("b", "nginx proxy_pass, upstream keep-alive (1 worker)", DIRECT_PATH, _nginx_proxy),
        Row(
            "d1",
            "Litestar handler + aiohttp passthrough, uvicorn 1w",
            DIRECT_PATH,
            _passthrough(1, "handler"),
        ),
        Row(
            "d1m",
            "Litestar mounted ASGI + aiohttp passthrough, uvicorn 1w",
            DIRECT_PATH,
            _passthrough(1, "mount"),
        ),
        Row(
            "d2",
            "Litestar handler + aiohttp passthrough, uvicorn 2w",
            DIRECT_PATH,
            _passthrough(2, "handler"),
        ),
        Row("g1", "gateway, 1 worker, audit on SQLite", GATEWAY_PATH, _gateway(1, False)),
        Row("g1-pg", "gateway, 1 worker, audit on PostgreSQL", GATEWAY_PATH, _gateway(1, True)),
        Row(
            "g1v",
            "gateway, 1 worker, audit on SQLite, served from --variant-src (an ablation)",
            GATEWAY_PATH,
            _gateway(1, False, variant=True),
        ),
        Row(
            "g2v",
            "gateway, 2 workers, one audit log on SQLite, served from --variant-src",
            GATEWAY_PATH,
            _gateway(2, False, variant=True),
        ),
        Row(
            "g1t",
            "gateway, 1 worker, audit writer thread in the worker (no sequencer), SQLite",
            GATEWAY_PATH,
            _gateway(1, False, "thread"),
        ),
        Row(
            "g1tv",
            "gateway, 1 worker, audit writer thread, served from --variant-src (an ablation)",
            GATEWAY_PATH,
            _gateway(1, False, "thread", variant=True),
        ),
        Row("g2", "gateway, 2 workers, one audit log on SQLite", GATEWAY_PATH, _gateway(2, False)),
    )
}


def schema_url(url: str, schema: str) -> str:
    """The database URL with ``search_path`` set to ``schema`` (libpq ``options``)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def reset_schema(url: str, schema: str) -> None:
    """An empty schema for the gateway's audit tables (they are created on start)."""
    import psycopg

    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise HarnessError(f"--pg-schema must be a plain lowercase identifier, got {schema!r}")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as exc:
        raise HarnessError(f"cannot prepare schema {schema} at {url}: {exc}") from None


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def smoke_check(row: Row, base: str) -> dict[str, Any]:
    """One found and one missing id through the row; their status and body."""
    found = http_get(base + row.path[0] + "1" + row.path[1])
    missing = http_get(base + row.path[0] + "10" + row.path[1])
    return {
        "found": {"status": found[0], "content_type": found[1], "body": found[2].decode()},
        "missing": {"status": missing[0], "content_type": missing[1], "body": missing[2].decode()},
    }


@contextlib.contextmanager
def upstream_nginx(tmp: Path, log_dir: Path) -> Iterator[int]:
    port = free_port()
    conf = write_upstream_conf(tmp, port)
    server = Server(
        "nginx-upstream",
        ["nginx", "-c", str(conf), "-e", str(tmp / "upstream.stderr.log")],
        LOAD_CPU,
        log=log_dir / "nginx-upstream.log",
        stop_signal=signal.SIGQUIT,
    )
    server.start()
    try:
        wait_ready(server, f"http://{HOST}:{port}{DIRECT_PATH[0]}1{DIRECT_PATH[1]}", timeout=10)
        yield port
    finally:
        server.stop()


def measure_row(
    ctx: Context, row: Row, args: argparse.Namespace, round_no: int, script: Path
) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{row.key}-{round_no}-", dir=ctx.tmp))
    port = free_port()
    server = row.start(ctx, port, run_dir)
    base = ctx.upstream_url if server is None else f"http://{HOST}:{port}"
    result: dict[str, Any] = {"row": row.key, "round": round_no}
    result["idle_before"] = wait_quiet(args.quiet_wait)
    try:
        if server is not None:
            server.start()
            probe = "/readyz" if row.key.startswith("g") else row.path[0] + "1" + row.path[1]
            wait_ready(server, base + probe)
        if round_no == 0:
            result["smoke"] = smoke_check(row, base)
        url = base + "/"
        run_wrk(url, script, row.path, seconds=args.warmup, connections=args.connections)
        pids = server.pids() if server is not None else []
        cpu_before, busy_before = cpu_seconds(pids), cpu_times()
        threads_before = thread_cpu_seconds(pids)
        switches_before = thread_switches(pids)
        if server is not None:
            with RssSampler(server, 1.0) as sampler:
                wrk = run_wrk(
                    url, script, row.path, seconds=args.duration, connections=args.connections
                )
            result["rss_peak_mb"] = round(sampler.peak_kb / 1024, 1)
            result["pss_peak_mb"] = round(sampler.peak_pss_kb / 1024, 1)
            result["hwm_mb"] = [round(proc_status(p)["VmHWM"] / 1024, 1) for p in server.pids()]
        else:
            wrk = run_wrk(
                url, script, row.path, seconds=args.duration, connections=args.connections
            )
        result["cpu_busy"] = cpu_busy(busy_before, cpu_times())
        if server is not None:
            used = cpu_seconds(server.pids()) - cpu_before
            result["server_cpu_us_per_req"] = round(used / max(1, wrk["requests"]) * 1e6, 1)
            threads_after = thread_cpu_seconds(server.pids())
            requests = max(1, wrk["requests"])
            result["thread_cpu_us_per_req"] = {
                name: round((spent - threads_before.get(name, 0.0)) / requests * 1e6, 1)
                for name, spent in sorted(threads_after.items())
                if spent - threads_before.get(name, 0.0) > 0
            }
            switches_after = thread_switches(server.pids())
            result["thread_switches_per_req"] = {
                name: round((count - switches_before.get(name, 0)) / requests, 3)
                for name, count in sorted(switches_after.items())
                if count > switches_before.get(name, 0)
            }
            server.check_alive()
        result.update(wrk)
    finally:
        if server is not None:
            server.stop()
        if row.key.startswith("g") and server is not None and server.log is not None:
            result["log_tail"] = server.log.read_text(errors="replace")[-2000:]
            result["audit_db"] = audit_db_check(run_dir / "gateway" / "audit.db")
        if not args.keep_tmp:
            shutil.rmtree(run_dir, ignore_errors=True)
    return result


def audit_db_check(path: Path) -> dict[str, Any]:
    """Is the SQLite log one gap-free sequence whose head covers every row?"""
    import sqlite3

    if not path.exists():
        return {"present": False}
    with contextlib.closing(sqlite3.connect(path)) as db:
        count, low, high = db.execute(
            "SELECT count(*), min(seq), max(seq) FROM audit_record"
        ).fetchone()
        head = db.execute("SELECT size FROM audit_head WHERE id = 1").fetchone()
        kinds = dict(db.execute("SELECT kind, count(*) FROM audit_record GROUP BY kind"))
        checkpoints = db.execute("SELECT count(*), max(size) FROM audit_checkpoint").fetchone()
    return {
        "records": count,
        "gap_free": count == 0 or (low == 0 and high == count - 1),
        "head_size": head[0] if head else None,
        "kinds": kinds,
        "checkpoints": checkpoints[0],
        "last_checkpoint_size": checkpoints[1],
    }


def summarise(runs: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    table: list[dict[str, Any]] = []
    for key in keys:
        mine = [r for r in runs if r["row"] == key and "rps" in r]
        if not mine:
            continue
        rps = [r["rps"] for r in mine]
        entry: dict[str, Any] = {
            "row": key,
            "setup": ROWS[key].setup,
            "runs": len(mine),
            "rps": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50_ms": statistics.median(r["p50_us"] for r in mine) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in mine) / 1000,
            "non_2xx_pct": round(
                100 * sum(r["non_2xx"] for r in mine) / max(1, sum(r["requests"] for r in mine)), 2
            ),
            "socket_errors": sum(r["socket_errors"] for r in mine),
            "cpu0_busy": statistics.median(r["cpu_busy"].get("cpu0", 0) for r in mine),
            "cpu1_busy": statistics.median(r["cpu_busy"].get("cpu1", 0) for r in mine),
        }
        if "server_cpu_us_per_req" in mine[0]:
            entry["cpu_us_per_req"] = statistics.median(r["server_cpu_us_per_req"] for r in mine)
            entry["rss_peak_mb"] = max(r["rss_peak_mb"] for r in mine)
            entry["pss_peak_mb"] = max(r.get("pss_peak_mb", 0.0) for r in mine)
        table.append(entry)
    reference = next((e for e in table if e["row"] == "d1"), None)
    for entry in table:
        if reference is not None:
            entry["rps_vs_d1"] = round(entry["rps"] / reference["rps"], 3)
            entry["p99_vs_d1"] = round(entry["p99_ms"] / reference["p99_ms"], 3)
    return table


def render_table(table: list[dict[str, Any]]) -> str:
    lines = [
        "| row | setup | req/s | p50 ms | p99 ms | req/s vs d1 | p99 vs d1 | runs | range req/s "
        "| non-2xx % | server CPU µs/req | peak RSS MB | peak PSS MB | CPU0/CPU1 busy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for e in table:
        lines.append(
            f"| {e['row']} | {e['setup']} | {e['rps']:,.0f} | {e['p50_ms']:.2f} | "
            f"{e['p99_ms']:.2f} | {e.get('rps_vs_d1', float('nan')):.3f} | "
            f"{e.get('p99_vs_d1', float('nan')):.3f} | {e['runs']} | "
            f"{e['rps_min']:,.0f}–{e['rps_max']:,.0f} | {e['non_2xx_pct']:.1f} | "
            f"{e.get('cpu_us_per_req', float('nan')):.0f} | "
            f"{e.get('rss_peak_mb', float('nan')):.0f} | "
            f"{e.get('pss_peak_mb', float('nan')):.0f} | "
            f"{e['cpu0_busy']:.2f}/{e['cpu1_busy']:.2f} |"
        )
    return "\n".join(lines)


def targets(table: list[dict[str, Any]]) -> list[str]:
    by = {e["row"]: e for e in table}
    verdicts = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if "g1" in by and "d1" in by:
        g1, d1 = by["g1"], by["d1"]
        ratio = g1["rps"] / d1["rps"]
        verdicts.append(f"g1 throughput {ratio:.3f}x d1 (target >= 0.9): {verdict(ratio >= 0.9)}")
        ratio = g1["p99_ms"] / d1["p99_ms"]
        verdicts.append(f"g1 p99 {ratio:.3f}x d1 (target <= 1.1): {verdict(ratio <= 1.1)}")
    if "g2" in by and "g1" in by:
        ratio = by["g2"]["rps"] / by["g1"]["rps"]
        verdicts.append(f"g2 throughput {ratio:.3f}x g1 (target >= 1.6): {verdict(ratio >= 1.6)}")
    for key in ("g1", "g1-pg", "g2"):
        if key in by:
            peak = by[key]["pss_peak_mb"]
            verdicts.append(
                f"{key} peak PSS {peak:.0f} MB (all processes; target < 200): {verdict(peak < 200)}"
                f"; summed RSS {by[key]['rss_peak_mb']:.0f} MB"
            )
    return verdicts


def machine() -> dict[str, Any]:
    def out(*argv: str) -> str:
        with contextlib.suppress(OSError):
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        return ""

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": out("nproc"),
        "lscpu": out("lscpu").splitlines()[:10],
        "kernel": out("uname", "-r"),
        "python": sys.version.split()[0],
        "nginx": out("nginx", "-v")
        or subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, check=False
        ).stderr.strip(),
        "wrk": out("wrk", "-v").splitlines()[0] if out("wrk", "-v") else "",
        "packages": out(str(BIN / "pip"), "freeze").splitlines(),
    }


def run_dirs(kind: str | None) -> tuple[str, Path, Path]:
    """A timestamp, a scratch directory and a new server-log directory under
    ``bench/results`` for one run of a command (``kind`` names soak and paced runs)."""
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix=f"{kind or 'loadtest'}-"))
    log_dir = RESULTS / (f"logs-{kind}-{stamp}" if kind else f"logs-{stamp}")
    log_dir.mkdir()
    return stamp, tmp, log_dir


def row_keys(rows: str) -> list[str]:
    """The rows a comma-separated ``--rows`` names, in order; unknown ones are refused."""
    keys = [k.strip() for k in rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        raise HarnessError(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    return keys


def cmd_rows(args: argparse.Namespace) -> int:
    require_tools("nginx", "wrk", "taskset")
    keys = row_keys(args.rows)
    stamp, tmp, log_dir = run_dirs(None)
    runs: list[dict[str, Any]] = []
    output = RESULTS / f"rows-{stamp}.json"
    try:
        with upstream_nginx(tmp, log_dir) as upstream_port:
            ctx = Context.of(tmp, upstream_port, log_dir, args)
            script = write_wrk_script(tmp, ids=args.ids)
            # Rounds interleave the rows, so drift on a shared VM hits every row alike.
            for round_no in range(args.runs):
                for key in keys:
                    try:
                        result = measure_row(ctx, ROWS[key], args, round_no, script)
                    except HarnessError as exc:
                        result = {"row": key, "round": round_no, "error": str(exc)}
                    runs.append(result)
                    print(_progress(result), flush=True)
                    output.write_text(json.dumps({"args": _args(args), "runs": runs}, indent=1))
    finally:
        if "g1-pg" in keys:
            drop_schema(args.pg_url, args.pg_schema)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    table = summarise(runs, keys)
    verdicts = targets(table)
    output.write_text(
        json.dumps(
            {
                "args": _args(args),
                "machine": machine(),
                "table": table,
                "targets": verdicts,
                "runs": runs,
            },
            indent=1,
        )
    )
    print()
    print(render_table(table))
    print()
    for line in verdicts:
        print(line)
    for failed in (r for r in runs if "error" in r):
        print(f"row {failed['row']} round {failed['round']} failed: {failed['error']}")
    print(f"\nraw results: {output.relative_to(ROOT)}; server logs: {log_dir.relative_to(ROOT)}")
    return 0


def _args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}


def _progress(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"[{result['row']} #{result['round']}] FAILED: {result['error'].splitlines()[0]}"
    text = (
        f"[{result['row']} #{result['round']}] {result['rps']:,.0f} req/s, "
        f"p50 {result['p50_us'] / 1000:.2f} ms, p99 {result['p99_us'] / 1000:.2f} ms, "
        f"non-2xx {result['non_2xx']}, socket errors {result['socket_errors']}, "
        f"CPU busy {result['cpu_busy']}"
    )
    if "server_cpu_us_per_req" in result:
        text += (
            f", {result['server_cpu_us_per_req']} µs CPU/req, RSS {result['rss_peak_mb']} MB"
            f", PSS {result['pss_peak_mb']} MB"
        )
    if result.get("thread_cpu_us_per_req"):
        text += f", by thread {result['thread_cpu_us_per_req']}"
    if result.get("thread_switches_per_req"):
        text += f", context switches per request {result['thread_switches_per_req']}"
    return text


# -- soak --------------------------------------------------------------------------------


def cmd_soak(args: argparse.Namespace) -> int:
    """Peak RSS at saturation, then ``--duration`` seconds at ``--fraction`` of that rate."""
    require_tools("nginx", "wrk", "taskset")
    stamp, tmp, log_dir = run_dirs("soak")
    output = RESULTS / f"soak-{stamp}.json"
    report: dict[str, Any] = {"args": _args(args)}
    try:
        with upstream_nginx(tmp, log_dir) as upstream_port:
            ctx = Context.of(tmp, upstream_port, log_dir, args)
            row = ROWS[args.row]
            server = row.start(ctx, port := free_port(), tmp)
            assert server is not None
            base = f"http://{HOST}:{port}"
            report["idle_before"] = wait_quiet(args.quiet_wait)
            print(f"CPU busy before the start: {report['idle_before']}", flush=True)
            server.start()
            try:
                wait_ready(server, base + "/healthz")
                script = write_wrk_script(tmp)
                run_wrk(base + "/", script, row.path, seconds=args.warmup, connections=64)
                with RssSampler(server, args.sample_interval) as saturated:
                    capacity = run_wrk(
                        base + "/",
                        script,
                        row.path,
                        seconds=args.capacity_seconds,
                        connections=64,
                    )
                report["saturation"] = {**capacity, "rss_samples": saturated.samples}
                target = capacity["rps"] * args.fraction
                print(
                    f"capacity {capacity['rps']:,.0f} req/s, peak RSS "
                    f"{saturated.peak_kb / 1024:.1f} MB, PSS {saturated.peak_pss_kb / 1024:.1f} "
                    f"MB; soaking at {target:,.0f} req/s (open loop) for {args.duration:g} s",
                    flush=True,
                )
                with RssSampler(server, args.sample_interval) as soak:
                    result = run_pacer(
                        base, row.path, rate=target, seconds=args.duration, every=60.0
                    )
                server.check_alive()
                report["soak"] = {
                    **result,
                    "target_rps": round(target, 1),
                    "rss_samples": soak.samples,
                    "pss_samples": soak.pss,
                }
                report["hwm_mb"] = [round(proc_status(p)["VmHWM"] / 1024, 1) for p in server.pids()]
                report["audit_db_mb"] = round(
                    sum(f.stat().st_size for f in (tmp / "gateway").glob("audit.db*")) / 2**20, 1
                )
            finally:
                server.stop()
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    report["machine"] = machine()
    report["summary"] = soak_summary(report)
    output.write_text(json.dumps(report, indent=1))
    for line in report["summary"]:
        print(line)
    print(f"raw results: {output.relative_to(ROOT)}")
    return 0


def soak_summary(report: dict[str, Any]) -> list[str]:
    soak = report["soak"]
    samples: list[tuple[float, int]] = soak["rss_samples"]
    mb = [kb / 1024 for _, kb in samples]
    half = len(mb) // 2
    # Least-squares slope over the second half: growth once caches have filled.
    xs = [t for t, _ in samples[half:]]
    ys = mb[half:]
    slope = 0.0
    if len(xs) > 1:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 60
    sat = report["saturation"]
    sat_peak = max(kb for _, kb in sat["rss_samples"]) / 1024
    return [
        f"saturation: {sat['rps']:,.0f} req/s, p99 {sat['p99_us'] / 1000:.2f} ms, "
        f"peak RSS {sat_peak:.1f} MB",
        f"soak: {soak['rps']:,.0f} req/s achieved (target {soak['target_rps']:,.0f}) for "
        f"{soak['duration_s']:.0f} s, p50 {soak['p50_us'] / 1000:.2f} ms, "
        f"p99 {soak['p99_us'] / 1000:.2f} ms, non-2xx {soak['non_2xx']}, "
        f"errors {soak['errors']}",
        f"soak RSS: first {mb[0]:.1f} MB, max {max(mb):.1f} MB, last {mb[-1]:.1f} MB; "
        f"slope over the second half {slope:+.2f} MB/min; VmHWM {report['hwm_mb']} MB",
        f"audit database after the run: {report['audit_db_mb']} MB",
    ]


# -- paced: latency at a light, fixed rate -------------------------------------------------


def cmd_paced(args: argparse.Namespace) -> int:
    """p50 at a fixed light rate (open loop), each row started fresh, rounds interleaved."""
    require_tools("nginx", "wrk", "taskset")
    keys = row_keys(args.rows)
    stamp, tmp, log_dir = run_dirs("paced")
    runs: list[dict[str, Any]] = []
    try:
        with upstream_nginx(tmp, log_dir) as upstream_port:
            ctx = Context.of(tmp, upstream_port, log_dir, args)
            for round_no in range(args.runs):
                for key in keys:
                    row = ROWS[key]
                    run_dir = Path(tempfile.mkdtemp(prefix=f"{key}-{round_no}-", dir=tmp))
                    port = free_port()
                    server = row.start(ctx, port, run_dir)
                    base = ctx.upstream_url if server is None else f"http://{HOST}:{port}"
                    wait_quiet(args.quiet_wait)
                    try:
                        if server is not None:
                            server.start()
                            probe = "/readyz" if key.startswith("g") else "/v2/user.json/1/score"
                            wait_ready(server, base + probe)
                        # The warm-up asks for every id once (ids cycle 1..1000): the
                        # first lookup of an id claims it as real in the identity store
                        # (a durable write of its own), which the measured runs then
                        # do not repeat. --first-sight measures those lookups instead.
                        warmup = 0.0 if args.first_sight else max(args.warmup, 1000 / args.rate)
                        if warmup:
                            run_pacer(base, row.path, rate=args.rate, seconds=warmup)
                        result = run_pacer(base, row.path, rate=args.rate, seconds=args.duration)
                    finally:
                        if server is not None:
                            server.stop()
                        shutil.rmtree(run_dir, ignore_errors=True)
                    result.pop("windows", None)
                    runs.append({"row": key, "round": round_no, **result})
                    print(
                        f"[{key} #{round_no}] {result['rps']:,.1f} req/s (target {args.rate:g}), "
                        f"p50 {result['p50_us'] / 1000:.2f} ms, p90 {result['p90_us'] / 1000:.2f} "
                        f"ms, p99 {result['p99_us'] / 1000:.2f} ms, non-2xx {result['non_2xx']}, "
                        f"errors {result['errors']}",
                        flush=True,
                    )
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        "\n| row | setup | rate req/s | p50 ms | p90 ms | p99 ms | runs |\n"
        "|---|---|---:|---:|---:|---:|---:|"
    )
    for key in keys:
        mine = [r for r in runs if r["row"] == key]
        print(
            f"| {key} | {ROWS[key].setup} | {statistics.median(r['rps'] for r in mine):,.1f} | "
            f"{statistics.median(r['p50_us'] for r in mine) / 1000:.2f} | "
            f"{statistics.median(r['p90_us'] for r in mine) / 1000:.2f} | "
            f"{statistics.median(r['p99_us'] for r in mine) / 1000:.2f} | {len(mine)} |"
        )
    if "g1" in keys:
        p50 = statistics.median(r["p50_us"] for r in runs if r["row"] == "g1") / 1000
        verdict = "met" if p50 <= 5.0 else "NOT met"
        print(f"\ng1 p50 at {args.rate:g} req/s: {p50:.2f} ms (target <= 5 ms): {verdict}")
    output = RESULTS / f"paced-{stamp}.json"
    output.write_text(
        json.dumps({"args": _args(args), "runs": runs, "machine": machine()}, indent=1)
    )
    print(f"raw results: {output.relative_to(ROOT)}")
    return 0


# -- profile -----------------------------------------------------------------------------


def cmd_profile(args: argparse.Namespace) -> int:
    """py-spy on the 1-worker gateway at saturation: an SVG and a folded-stack summary."""
    require_tools("nginx", "wrk", "taskset", "py-spy")
    RESULTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="profile-"))
    log_dir = RESULTS / "logs-profile"
    log_dir.mkdir(exist_ok=True)
    try:
        with upstream_nginx(tmp, log_dir) as upstream_port:
            ctx = Context.of(tmp, upstream_port, log_dir, args)
            row = ROWS[args.row]
            server = row.start(ctx, port := free_port(), tmp)
            assert server is not None
            base = f"http://{HOST}:{port}"
            report_idle = wait_quiet(args.quiet_wait)
            print(f"CPU busy before the start: {report_idle}", flush=True)
            server.start()
            try:
                wait_ready(server, base + "/healthz")
                script = write_wrk_script(tmp)
                run_wrk(base + "/", script, row.path, seconds=args.warmup, connections=64)
                pid = server.pid  # with --subprocesses: its workers and sequencer too
                for fmt, target in (("raw", args.raw), ("flamegraph", args.svg)):
                    load = threading.Thread(
                        target=run_wrk,
                        args=(base + "/", script, row.path),
                        kwargs={"seconds": args.seconds + 3, "connections": 64},
                    )
                    load.start()
                    time.sleep(1)
                    subprocess.run(
                        [
                            "taskset",
                            "-c",
                            LOAD_CPU,
                            tool("py-spy"),
                            "record",
                            "--pid",
                            str(pid),
                            "-d",
                            str(args.seconds),
                            "--rate",
                            str(args.rate),
                            "--nonblocking",
                            "--threads",
                            "--subprocesses",  # g2: the forked workers and sequencer
                            "--format",
                            fmt,
                            "-o",
                            str(target),
                        ],
                        check=True,
                        capture_output=True,
                    )
                    load.join()
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(folded_summary(args.raw, top=args.top))
    print(f"flame graph: {args.svg}; folded stacks: {args.raw}")
    return 0


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str, keep_file: bool = True) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['func']} ({file})" if keep_file else match["func"]


def folded_summary(path: Path, top: int = 25) -> str:
    """Self and inclusive shares of the main thread's samples, from py-spy's raw format."""
    threads: dict[str, int] = {}
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    main_total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        threads[thread] = threads.get(thread, 0) + count
        if "MainThread" not in thread and "process" not in thread:
            continue
        main_total += count
        names = [_frame_name(f) for f in frames[1:]]
        if names:
            self_counts[names[-1]] = self_counts.get(names[-1], 0) + count
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count
    all_total = sum(threads.values()) or 1
    out = ["samples per thread:"]
    for thread, count in sorted(threads.items(), key=lambda kv: -kv[1]):
        out.append(f"  {100 * count / all_total:5.1f}%  {thread}")
    total = main_total or 1
    out.append(f"\nmain thread, self time (top {top}):")
    for name, count in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * count / total:5.1f}%  {name}")
    out.append("\nmain thread, inclusive time of gateway/ functions:")
    own = [(n, c) for n, c in inclusive.items() if "(gateway/" in n]
    for name, count in sorted(own, key=lambda kv: -kv[1])[: top * 2]:
        out.append(f"  {100 * count / total:5.1f}%  {name}")
    out.append(f"\nmain thread, inclusive time of other functions (top {top}):")
    other = [(n, c) for n, c in inclusive.items() if "(gateway/" not in n]
    for name, count in sorted(other, key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(out)


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--warmup",
            type=float,
            default=8.0,
            help="discarded seconds of load (8: long enough for every worker of g2 to "
            "have settled each of the 1,000 ids; each worker's first sight of an id is a "
            "durable claim, measured by `paced --first-sight`, not by the steady rows)",
        )
        p.add_argument(
            "--pg-url",
            default="postgresql://postgres@127.0.0.1:5432/test",
            help="PostgreSQL for g1-pg; the gateway gets a fresh schema in it",
        )
        p.add_argument("--pg-schema", default="bench_gateway_audit")
        p.add_argument(
            "--quiet-wait",
            type=float,
            default=120.0,
            help="seconds to wait for an idle machine before each row (0: do not wait)",
        )
        p.add_argument(
            "--gateway-src",
            type=Path,
            default=ROOT,
            help="directory holding the gateway package to serve (a patched scratch copy)",
        )
        p.add_argument(
            "--variant-src",
            type=Path,
            default=None,
            help="row g1v serves the gateway package from this directory, interleaved "
            "with g1: measure a patch, or a step left out, in the same run",
        )
        p.add_argument("--keep-tmp", action="store_true", help="keep configs and audit databases")

    rows = sub.add_parser("rows", help="measure the rows and print the table")
    common(rows)
    rows.add_argument("--rows", default="a,b,d1,d1m,d2,g1,g1-pg,g2")
    rows.add_argument("--runs", type=int, default=3, help="measured runs per row")
    rows.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    rows.add_argument("--connections", type=int, default=64)
    rows.add_argument(
        "--ids",
        type=int,
        default=1000,
        help="distinct ids the load cycles through (1000000: cold traffic, each lookup "
        "almost always the first of its id; use with --warmup 1)",
    )
    rows.set_defaults(func=cmd_rows)

    soak = sub.add_parser("soak", help="peak RSS at saturation, then a long run at half capacity")
    common(soak)
    soak.add_argument("--row", default="g1", choices=["g1", "g1-pg", "g2"])
    soak.add_argument("--duration", type=float, default=600.0, help="soak seconds")
    soak.add_argument("--capacity-seconds", type=float, default=10.0)
    soak.add_argument("--fraction", type=float, default=0.5, help="of the saturated rate")
    soak.add_argument("--sample-interval", type=float, default=5.0, help="RSS sampling seconds")
    soak.set_defaults(func=cmd_soak)

    paced = sub.add_parser("paced", help="latency at a light fixed rate (open loop)")
    common(paced)
    paced.add_argument("--rows", default="d1,g1")
    paced.add_argument("--rate", type=float, default=100.0, help="requests per second")
    paced.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    paced.add_argument("--runs", type=int, default=3)
    paced.add_argument(
        "--first-sight",
        action="store_true",
        help="no warm-up: the measured lookups include each id's first (its claim as real)",
    )
    paced.set_defaults(func=cmd_paced)

    profile = sub.add_parser("profile", help="py-spy the gateway under saturating load")
    common(profile)
    profile.add_argument("--row", default="g1", choices=["g1", "g1-pg", "g2"])
    profile.add_argument("--seconds", type=int, default=10)
    profile.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    profile.add_argument("--top", type=int, default=25)
    profile.add_argument("--svg", type=Path, default=RESULTS / "profile.svg")
    profile.add_argument("--raw", type=Path, default=RESULTS / "profile.txt")
    profile.set_defaults(func=cmd_profile)

    summary = sub.add_parser("summarise-profile", help="re-read a py-spy raw file")
    summary.add_argument("raw", type=Path)
    summary.add_argument("--top", type=int, default=25)
    summary.set_defaults(func=lambda a: print(folded_summary(a.raw, a.top)) or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except HarnessError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
