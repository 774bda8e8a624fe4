"""A real `gateway witness` process beside a real `gateway serve --demo`, under light load
for 12 seconds: every checkpoint the gateway signs is cosigned, and the export verifies
with the witness key."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.audit.store import AuditStore
from gateway.cli import main
from tests.support.servers import free_port, wait_until_serving

LOAD_SECONDS = 12
NAME = "witness.test/w1"


def _command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "gateway", *map(str, args)]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _start_witness(
    log_vkey: Path, witness_dir: Path, out: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with out.open("ab") as sink:
        process = subprocess.Popen(
            _command("witness", "--name", NAME, "--log-key", log_vkey, "--data-dir", witness_dir,
                     "--port", str(port), "--log-level", "warning"),
            stdout=sink, stderr=sink,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url + "/healthz", log=out, timeout=15)
    return process, url


def _start_gateway(data: Path, witness: str, out: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with out.open("ab") as sink:
        process = subprocess.Popen(
            _command("serve", "--demo", "--data-dir", data, "--port", str(port),
                     "--witness", witness, "--log-level", "warning"),
            stdout=sink, stderr=sink,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url + "/readyz", log=out)
    return process, url


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_witness_process_cosigns_every_checkpoint_of_a_serving_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """12 s of lookups at ~6/s: each checkpoint signed while serving is cosigned by the
    witness process, and `verify --witness-key` accepts the export."""
    data, witness_dir, logs = tmp_path / "var", tmp_path / "witness", tmp_path / "logs.txt"
    assert main(["keys", "generate", "--data-dir", str(data)]) == 0
    assert main(["keys", "public", "--vkey", "--data-dir", str(data)]) == 0
    log_vkey = tmp_path / "log.vkey"
    log_vkey.write_text(capsys.readouterr().out.splitlines()[-1] + "\n")
    witness, witness_url = _start_witness(log_vkey, witness_dir, logs)
    try:
        gateway, url = _start_gateway(data, f"{witness_url}={witness_dir / 'witness.vkey'}", logs)
        try:
            statuses: list[int] = []
            with httpx.Client(base_url=url, timeout=10) as client:
                end = time.monotonic() + LOAD_SECONDS
                while time.monotonic() < end:
                    r = client.get("/klout/v2/user.json/5001/score", params={"key": "demo-crm-key"})
                    statuses.append(r.status_code)
                    time.sleep(0.15)
        finally:
            _stop(gateway)
    finally:
        _stop(witness)
    assert statuses.count(200) >= LOAD_SECONDS * 4, statuses[:20]

    store = AuditStore.open(data_dir=data)
    try:
        sizes = [c.size for c in store.iter_checkpoints(1, 1 << 40)]
        cosigned = store.cosignatures(0, 1 << 40)
    finally:
        store.close()
    assert len(sizes) >= LOAD_SECONDS // 2  # about one per second while records flow
    uncosigned = [s for s in sizes if s not in cosigned]
    assert uncosigned == [], f"{len(uncosigned)} of {len(sizes)} checkpoints lack a cosignature"
    assert "ALERT" not in logs.read_text()

    export, pem = tmp_path / "audit.jsonl", tmp_path / "keys.pem"
    assert main(["audit", "export", "--data-dir", str(data), "--out", str(export)]) == 0
    capsys.readouterr()
    assert main(["keys", "public", "--data-dir", str(data)]) == 0
    pem.write_text(capsys.readouterr().out)
    witness_key = str(witness_dir / "witness.vkey")
    args = ["audit", "verify", "--quiet", str(export), "--public-key", str(pem)]
    assert main([*args, "--witness-key", witness_key, "--min-witnesses", "1"]) == 0
    assert f"witnessed by {NAME}" in capsys.readouterr().out
