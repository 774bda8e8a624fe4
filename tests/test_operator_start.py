"""An operator's first start: what is missing is said, a taken port is one line, and every
command reads the same settings (flags, then GATEWAY_*, then defaults)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.clients import load_admin_hashes, load_issued_keys
from gateway.settings import Settings, SettingsError, resolve
from tests.support.gateway import SHIPPED_POLICY, copy_shipped_policy
from tests.support.servers import free_port


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KLOUT_"))}
    env.update(extra)
    return env


class Served:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), *args],
            stdout=sink,
            stderr=sink,
            env=env or _environment(),
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, log.read_text()
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        yield Served(process, url, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


@pytest.fixture
def empty_start(tmp_path: Path) -> Iterator[Served]:
    """``serve`` without --demo, with the shipped policy and nothing else: no upstream
    key in the environment, no client key, no admin token."""
    policy = copy_shipped_policy(tmp_path)
    yield from _serve(tmp_path, "--policies", str(policy), "--data-dir", str(tmp_path / "var"))


def test_an_empty_configuration_starts_not_ready_and_says_what_is_missing(
    empty_start: Served,
) -> None:
    """/readyz answers 503 listing every missing piece, and the start log lists the same."""
    r = httpx.get(empty_start.url + "/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False
    assert (body["policy"], body["audit"], body["keys"]) == (True, True, True)
    missing = body["missing"]
    assert len(missing) == 3, missing
    assert "KLOUT_API_KEY" in missing[0]
    assert "gateway clients add" in missing[1]
    assert "gateway admin-token" in missing[2]
    log = empty_start.log.read_text()
    assert "not ready to answer lookups" in log
    for piece in missing:
        assert piece in log


def test_providing_the_pieces_makes_it_ready(tmp_path: Path) -> None:
    """With the upstream key in the environment and an admin token, the start lists only
    the client key; a key issued while it runs makes it ready without a restart."""
    policy = copy_shipped_policy(tmp_path)
    data = tmp_path / "var"
    assert main(["admin-token", "--data-dir", str(data)]) == 0
    env = _environment(KLOUT_API_KEY="k-from-the-vault")
    for served in _serve(tmp_path, "--policies", str(policy), "--data-dir", str(data), env=env):
        first = httpx.get(served.url + "/readyz")
        assert first.status_code == 503
        (missing,) = first.json()["missing"]
        assert "gateway clients add" in missing
        assert main(
            ["clients", "add", "crm", "--kind", "crm", "--purpose", "sales",
             "--policies", str(policy), "--data-dir", str(data)]
        ) == 0  # fmt: skip
        r = httpx.get(served.url + "/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["missing"] == []


def test_a_taken_port_is_one_line_with_a_hint(tmp_path: Path) -> None:
    """A bind failure exits non-zero with a single line naming the address and a hint."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--demo", "--port", str(port),
             "--data-dir", str(tmp_path / "var")],
            capture_output=True,
            env=_environment(),
            timeout=60,
            check=False,
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gateway serve: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in lines[0]
    assert "--port" in lines[0]


def test_a_policy_whose_cases_fail_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At start there is no last good policy to keep: failing cases stop the start."""
    policy = copy_shipped_policy(
        tmp_path, SHIPPED_POLICY.read_text().replace("    action: coarsen\n", "    action: deny\n")
    )
    assert main(["serve", "--policies", str(policy), "--data-dir", str(tmp_path / "var")]) == 1
    err = capsys.readouterr().err
    assert "the policy cannot go live" in err
    assert "support.yaml:" in err


# -- one source of settings ---------------------------------------------------------------


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    """A flag beats its GATEWAY_* variable, which beats the default in Settings."""
    env = {"GATEWAY_PORT": "9001", "GATEWAY_DATA_DIR": "/srv/var", "GATEWAY_DEMO": "yes"}
    assert resolve({}, env).port == 9001
    assert resolve({"port": 9002}, env).port == 9002
    assert resolve({"port": None}, env).port == 9001
    assert resolve({}, {}).port == Settings().port
    assert resolve({}, env).data_dir == Path("/srv/var")
    assert resolve({}, env).demo is True
    overrides = resolve(
        {"upstream_override": ["klout=http://127.0.0.1:1"]},
        {"GATEWAY_UPSTREAMS": "klout=http://a.example, kred=http://b.example"},
    ).upstream_overrides
    assert overrides == {"klout": "http://127.0.0.1:1", "kred": "http://b.example"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT='eighty'", id="port-not-a-number"),
        pytest.param({"GATEWAY_DEMO": "maybe"}, "GATEWAY_DEMO='maybe'", id="demo-not-a-boolean"),
        pytest.param({"GATEWAY_UPSTREAMS": "klout"}, "GATEWAY_UPSTREAMS", id="override-no-url"),
        pytest.param(
            {"GATEWAY_AUDIT_SEQUENCER": "both"}, "GATEWAY_AUDIT_SEQUENCER", id="sequencer-mode"
        ),
    ],
)
def test_a_bad_variable_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        resolve({}, env)


def test_every_command_honours_gateway_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """admin-token, clients add and objections add write where GATEWAY_DATA_DIR and
    GATEWAY_POLICIES say, as serve does."""
    data = tmp_path / "elsewhere"
    policy = copy_shipped_policy(tmp_path)
    monkeypatch.chdir(tmp_path / "policy-tests")  # no ./var, no ./policies.yaml here
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(data))
    monkeypatch.setenv("GATEWAY_POLICIES", str(policy))
    assert main(["admin-token"]) == 0
    assert len(load_admin_hashes(data)) == 1
    assert main(["clients", "add", "billing", "--kind", "crm", "--purpose", "sales"]) == 0
    assert [k.client for k in load_issued_keys(data).keys] == ["billing"]
    assert main(["objections", "add", "--upstream", "klout", "--subject", "1003"]) == 0
    assert (data / "pseudonym.key").exists() or any(data.iterdir())
    assert not (tmp_path / "policy-tests" / "var").exists()
    assert "billing" in policy.read_text()
    capsys.readouterr()
