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
from tests.support.servers import free_port


@pytest.mark.slow
def test_two_workers_serve_and_share_one_verifiable_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    data = tmp_path / "var"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--demo", "--workers", "2",
         "--port", str(port), "--data-dir", str(data), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "gateway serve --workers 2 exited"
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "two workers did not become ready"
            time.sleep(0.1)
        with httpx.Client(base_url=url) as c:
            statuses = [
                c.get("/klout/v2/user.json/5001/score", params={"key": "demo-crm-key"}).status_code
                for _ in range(4)
            ]
        # Without Redis each worker holds half of Klout's 9/s: 4 calls at once fit.
        assert statuses == [200] * 4
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # uvicorn's supervisor and its workers
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
