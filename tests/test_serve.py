"""``gateway serve`` as operators run it: a real process, here with two workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.supervisor import SEQUENCER_NAME, WORKER_NAME
from tests.support.servers import free_port, wait_until_serving


@pytest.mark.slow
def test_two_workers_serve_and_share_one_verifiable_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "var"
    process, url = _serve(data, "--workers", "2")
    try:
        with httpx.Client(base_url=url) as c:
            statuses = [
                c.get("/klout/v2/user.json/5001/score", params={"key": "demo-crm-key"}).status_code
                for _ in range(4)
            ]
        # Without Redis each worker holds half of Klout's 9/s: 4 calls at once fit.
        assert statuses == [200] * 4
        # The parent forked its sequencer and two workers and only watches them, on
        # one thread (a fork from a threaded process can copy a held lock).
        assert sorted(_comm(child) for child in _children(process.pid)) == [
            SEQUENCER_NAME, WORKER_NAME, WORKER_NAME
        ]  # fmt: skip
        assert len(list(Path(f"/proc/{process.pid}/task").iterdir())) == 1
        # SIGTERM to the parent alone (as systemd or docker stop send it) stops all.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
    out = tmp_path / "audit.jsonl"
    keys = tmp_path / "keys.pem"
    assert main(["audit", "export", "--out", str(out), "--data-dir", str(data)]) == 0
    assert main(["keys", "public", "--data-dir", str(data)]) == 0
    keys.write_text(capsys.readouterr().out)
    assert main(["audit", "verify", str(out), "--public-key", str(keys)]) == 0
    text = out.read_text()
    assert text.count('"kind":"lookup"') == 4
    assert text.count('"kind":"gateway.start"') == 2  # one per worker


def _serve(data: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """``gateway serve --demo`` in a session of its own, once it is ready."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--demo", "--port", str(port),
         "--data-dir", str(data), "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url + "/readyz")
    return process, url


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or being reaped as we read
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.slow
def test_a_gateway_killed_with_9_leaves_no_process_behind(tmp_path: Path) -> None:
    """SIGKILL of serve's parent (an OOM kill, kill -9): the kernel stops its worker,
    and its sequencer stops once the worker has drained; nothing keeps the port."""
    process, url = _serve(tmp_path / "var")
    try:
        children = _children(process.pid)
        assert sorted(_comm(child) for child in children) == [SEQUENCER_NAME, WORKER_NAME]
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(child) for child in children):
            assert time.monotonic() < deadline, "a child outlived the gateway"
            time.sleep(0.1)
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/readyz", timeout=1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
