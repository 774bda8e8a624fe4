"""Connections: per-source limits, health always answered, stalled export readers cut off.

Every source here is a real loopback address: Linux routes all of 127.0.0.0/8 to
``lo``, so a client bound to 127.0.0.2 is another source than one on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec

from gateway.audit.log import AuditLog
from gateway.audit.record import AuditRecord, rfc3339
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from tests.faults.support import ADMIN, CRM, SCORE_PATH, export_and_verify, wait_for
from tests.support.gateway import limits, running_gateway

FLOODER = "127.0.0.2"


@contextlib.contextmanager
def silent_connections(
    url: str, count: int, source: str = FLOODER
) -> Iterator[list[socket.socket]]:
    """``count`` connections from ``source`` that send nothing."""
    host, port = url.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
            held.append(s)
        yield held
    finally:
        for s in held:
            s.close()


def _raw_get(url: str, path: str, source: str, headers: str = "") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _problem(raw: bytes) -> tuple[int, dict[str, object], dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), msgspec.json.decode(body), headers


def test_a_source_over_its_connection_cap_gets_a_problem_and_others_are_served(
    tmp_path: Path,
) -> None:
    """One source holding its cap of silent connections gets 503 connection.limited
    (problem+json, with a request id that is on the record) on the next one; another
    source's lookups and health checks are answered meanwhile."""
    with (
        running_gateway(tmp_path / "var", limits=limits(max_connections_per_source=20)) as gw,
        silent_connections(gw.url, 20),
    ):
        status, problem, headers = _problem(_raw_get(gw.url, "/healthz", FLOODER))
        assert status == 503
        assert problem["code"] == "connection.limited"
        assert headers["content-type"] == "application/problem+json"
        assert problem["request_id"] == headers["x-request-id"]
        refused_id = headers["x-request-id"]
        assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=5)
        assert r.status_code == 200
        log = export_and_verify(gw.url)  # an export writes the open aggregates first
    assert log.result.ok, str(log.result)
    [aggregate] = [r for r in log.records if refused_id in r.request_ids]
    assert (aggregate.kind, aggregate.error, aggregate.status) == (
        "refusal.aggregate",
        "connection.limited",
        503,
    )
    assert FLOODER not in (aggregate.source or "")


def test_2100_silent_connections_from_one_source_leave_everyone_else_served(
    tmp_path: Path,
) -> None:
    """Issue 10's finding with the default limits: one source opens 2,100 connections
    and sends nothing. Past its 256 it gets 503 connection.limited; other sources'
    health checks and lookups are answered as usual (uvicorn's global limit of 2,048
    answered everyone with plain text before)."""
    with running_gateway(tmp_path / "var") as gw, silent_connections(gw.url, 2100) as held:
        started = time.monotonic()
        assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
        assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 200
        r = httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=5)
        assert r.status_code == 200
        # The 257th connection on was answered at once, before it sent anything.
        held[-1].settimeout(2)
        status, problem, headers = _problem(held[-1].recv(65536))
        assert (status, problem["code"]) == (503, "connection.limited")
        assert problem["request_id"] == headers["x-request-id"]
        assert time.monotonic() - started < 4  # within the 5 s header deadline


def test_health_stays_answerable_when_the_gateway_is_full(tmp_path: Path) -> None:
    """Past the total connection limit, lookups get 503 gateway.overloaded as
    problem+json with a request id (not uvicorn's plain text), and /healthz and
    /readyz are still answered."""
    with (
        running_gateway(
            tmp_path / "var", limits=limits(max_connections=30, max_connections_per_source=1000)
        ) as gw,
        silent_connections(gw.url, 40),
    ):
        for path in ("/healthz", "/readyz"):
            status, body, _ = _problem(_raw_get(gw.url, path, "127.0.0.1"))
            assert status == 200, body
        status, problem, headers = _problem(
            _raw_get(gw.url, SCORE_PATH + "?key=demo-crm-key", "127.0.0.1")
        )
        assert status == 503
        assert problem["code"] == "gateway.overloaded"
        assert problem["request_id"] == headers["x-request-id"]
    # Once the silent connections are gone, lookups are served again.
    with running_gateway(tmp_path / "var2") as gw:
        assert httpx.get(gw.url + SCORE_PATH, params=CRM, timeout=5).status_code == 200


# -- stalled export readers ---------------------------------------------------------------


def _fill(data_dir: Path, count: int) -> None:
    """A log large enough that an export cannot fit in socket buffers."""

    async def scenario() -> None:
        store = AuditStore.open(data_dir=data_dir)
        log = AuditLog(store, KeyRing.load_or_create(data_dir))
        await log.start()
        now = time.time()
        for first in range(0, count, 500):
            await asyncio.gather(
                *(
                    log.append(
                        AuditRecord(
                            kind="gateway.start",
                            time=rfc3339(now),
                            request_id=f"{i:032x}",
                            detail="padding " * 60,
                        )
                    )
                    for i in range(first, min(count, first + 500))
                )
            )
        await log.close()
        store.close()

    asyncio.run(scenario())


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _stalled_reader(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no window scaling
    s.connect((host, int(port)))
    s.sendall(
        b"GET /admin/audit/export HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer demo-admin-token\r\n\r\n"
    )
    return s


def _drain(s: socket.socket) -> tuple[bytes, bool]:
    """The start of what is left to read, and whether the server cut the connection."""
    s.settimeout(2)
    head = b""
    try:
        while chunk := s.recv(1 << 20):
            head = (head + chunk)[:512]
    except ConnectionResetError:
        return head, True
    except TimeoutError:
        return head, False
    return head, True


def test_stalled_export_readers_are_cut_off_and_their_memory_returned(tmp_path: Path) -> None:
    """20 readers request an export and never read: max_exports of them stream until
    nothing was taken for write_timeout and are then cut off, the others get 503
    export.busy at once; memory comes back, and exports work again after."""
    data = tmp_path / "var"
    _fill(data, 12_000)
    with running_gateway(data, limits=limits(write_timeout=1.0, max_exports=4)) as gw:
        full = len(httpx.get(gw.url + "/admin/audit/export", headers=ADMIN, timeout=30).content)
        assert full > 5_000_000
        gc.collect()
        before = _rss_mb()
        readers = [_stalled_reader(gw.url) for _ in range(20)]
        time.sleep(3.0)  # write_timeout = 1 s, plus time to stream up to the stall
        peak = _rss_mb()
        drained = [_drain(s) for s in readers]
        for s in readers:
            s.close()
        busy = [head for head, _ in drained if head.startswith(b"HTTP/1.1 503")]
        streamed = [(head, cut) for head, cut in drained if head.startswith(b"HTTP/1.1 200")]
        assert len(busy) == 16
        assert all(b"export.busy" in head for head in busy)
        assert len(streamed) == 4
        assert all(cut for _, cut in streamed), "a stalled reader was still connected"
        wait_for(lambda: gw.state.exports.running == 0, 5, "the exports to end")
        time.sleep(0.3)
        gc.collect()
        after = _rss_mb()
        r = httpx.get(gw.url + "/admin/audit/export", headers=ADMIN, timeout=30)
        assert r.status_code == 200
        assert len(r.content) >= full
    print(
        f"RSS before {before:.0f} MB, with 20 stalled readers {peak:.0f} MB, after {after:.0f} MB"
    )
    assert after - before < 20, (before, peak, after)
