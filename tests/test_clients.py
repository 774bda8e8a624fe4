"""Keys, tokens and roles: issued, listed, revoked and rotated while the gateway runs.

Each test drives the real ``gateway`` command against a data directory that a real
gateway on loopback is serving from, and looks at what callers then get.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.clients import (
    ADMIN_TOKENS_FILE,
    ClientKeyExists,
    issue_client_key,
    key_hash,
    load_admin_tokens,
    load_issued_keys,
)
from tests.support.gateway import SHIPPED_POLICY, RunningGateway, running_gateway

SCORE = "/klout/v2/user.json/5001/score"


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    shutil.copy(SHIPPED_POLICY, path)
    return path


@pytest.fixture
def gw(tmp_path: Path, policy: Path) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path / "var", policies=policy) as running:
        yield running


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """The key files are looked at once a second at most."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _status(gw: RunningGateway, key: str) -> int:
    return httpx.get(gw.url + SCORE, params={"key": key}, timeout=10).status_code


def test_readme_example_client_works_on_its_first_call(
    gw: RunningGateway, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``clients add billing --kind crm --purpose sales`` makes ``sales`` the default
    purpose, so a call without X-Purpose is answered, not refused ``purpose.missing``."""
    data = str(gw.data_dir)
    code, out, _ = _cli(
        capsys, "clients", "add", "billing", "--kind", "crm", "--purpose", "sales",
        "--policies", str(policy), "--data-dir", data,
    )  # fmt: skip
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert "default_purpose: sales" in policy.read_text()
    _eventually(lambda: _status(gw, key) == 200, "the new key to work")
    r = httpx.get(gw.url + SCORE, params={"key": key}, timeout=10)
    assert r.json()["score"] == 71.3


def test_clients_add_twice_is_refused_and_leaves_the_first_key_alone(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "var"
    args = ["clients", "add", "billing", "--kind", "crm", "--purpose", "sales",
            "--policies", str(policy), "--data-dir", str(data)]  # fmt: skip
    code, out, _ = _cli(capsys, *args)
    assert code == 0
    first = out.strip().splitlines()[-1]
    code, out, err = _cli(capsys, *args)
    assert code == 1
    assert "rotate-key billing" in err
    assert out == ""
    issued = load_issued_keys(data)
    assert [k.key_hash for k in issued.active("billing")] == [key_hash(first)]
    with pytest.raises(ClientKeyExists):
        issue_client_key(data, "billing")


def test_revoke_stops_the_key_on_a_running_gateway(
    gw: RunningGateway, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(gw.data_dir)
    _, out, _ = _cli(
        capsys, "clients", "add", "billing", "--kind", "crm", "--purpose", "sales",
        "--policies", str(policy), "--data-dir", data,
    )  # fmt: skip
    key = out.strip().splitlines()[-1]
    _eventually(lambda: _status(gw, key) == 200, "the new key to work")
    code, out, _ = _cli(capsys, "clients", "revoke", "billing", "--data-dir", data)
    assert code == 0
    assert key_hash(key).removeprefix("sha256:")[:12] in out
    revoked_at = time.monotonic()
    _eventually(lambda: _status(gw, key) == 401, "the revoked key to fail", timeout=3)
    assert time.monotonic() - revoked_at < 1.5
    code, _, err = _cli(capsys, "clients", "revoke", "billing", "--data-dir", data)
    assert code == 1
    assert "no working key" in err


def test_rotate_key_prints_a_new_key_once_and_the_old_one_stops(
    gw: RunningGateway, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(gw.data_dir)
    _, out, _ = _cli(
        capsys, "clients", "add", "billing", "--kind", "crm", "--purpose", "sales",
        "--policies", str(policy), "--data-dir", data,
    )  # fmt: skip
    old = out.strip().splitlines()[-1]
    _eventually(lambda: _status(gw, old) == 200, "the first key to work")
    code, out, _ = _cli(
        capsys, "clients", "rotate-key", "billing", "--policies", str(policy), "--data-dir", data
    )
    assert code == 0
    new = out.strip().splitlines()[-1]
    assert new != old
    assert out.count(new) == 1
    _eventually(lambda: _status(gw, new) == 200, "the new key to work")
    assert _status(gw, old) == 401
    assert [k.key_hash for k in load_issued_keys(gw.data_dir).active("billing")] == [key_hash(new)]


@pytest.mark.parametrize(
    "client",
    [
        pytest.param("nobody-declared", id="undeclared-client"),
        pytest.param("billing\n", id="newline-in-id"),
    ],
)
def test_rotate_key_refuses_a_client_the_policy_does_not_declare(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], client: str
) -> None:
    code, out, _ = _cli(
        capsys, "clients", "rotate-key", client, "--policies", str(policy),
        "--data-dir", str(tmp_path / "var"),
    )  # fmt: skip
    assert code == 1
    assert out == ""
    assert not (tmp_path / "var").exists()


def test_clients_list_shows_fingerprints_never_keys(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "var")
    _, out, _ = _cli(
        capsys, "clients", "add", "billing", "--kind", "crm", "--purpose", "sales",
        "--purpose", "marketing.communications.email", "--default-purpose", "sales",
        "--policies", str(policy), "--data-dir", data,
    )  # fmt: skip
    first = out.strip().splitlines()[-1]
    _, out, _ = _cli(
        capsys, "clients", "rotate-key", "billing", "--policies", str(policy), "--data-dir", data
    )
    second = out.strip().splitlines()[-1]
    code, listing, _ = _cli(
        capsys, "clients", "list", "--policies", str(policy), "--data-dir", data
    )
    assert code == 0
    assert first not in listing
    assert second not in listing
    rows = {line.split()[3]: line.split() for line in listing.splitlines()[1:] if "billing" in line}
    old_fp, new_fp = (key_hash(k).removeprefix("sha256:")[:12] for k in (first, second))
    assert rows[old_fp][:3] == ["billing", "crm", "sales*,marketing.communications.email"]
    assert rows[old_fp][4] == "revoked"
    assert rows[new_fp][4] == "active"
    assert any(line.split()[:2] == ["crm", "crm"] for line in listing.splitlines())


# -- admin tokens and roles -----------------------------------------------------------

ROUTES = [
    # (method, path, body, role it needs or None for any admin role)
    ("GET", "/admin/policy", None, None),
    ("GET", "/admin/audit/public-key", None, None),
    ("GET", "/admin/audit/export", None, "auditor"),
    ("GET", "/admin/audit/subject?upstream=klout&subject=alice_example", None, "auditor"),
    ("POST", "/admin/policy/validate", SHIPPED_POLICY.read_bytes(), "policy"),
    (
        "POST",
        "/admin/policy/explain",
        b'{"client":"crm","upstream":"klout","path":"/v2/user.json/5001/score"}',
        "policy",
    ),
    ("GET", "/metrics", None, "operator"),
]


def _issue(capsys: pytest.CaptureFixture[str], data: Path, *role: str) -> str:
    code, out, _ = _cli(capsys, "admin-token", *role, "--data-dir", str(data))
    assert code == 0
    return out.strip().splitlines()[-1]


def test_admin_tokens_work_without_a_restart_and_each_route_checks_the_role(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token made while the gateway runs opens /admin within a second; a route
    answers 403 admin.forbidden_role, naming the role it needs, to any other role
    than its own or operator."""
    tokens = {role: _issue(capsys, gw.data_dir, "--role", role) for role in ("auditor", "policy")}
    tokens["operator"] = _issue(capsys, gw.data_dir)  # the default role
    assert {t.role for t in load_admin_tokens(gw.data_dir).tokens} == {
        "auditor", "policy", "operator",
    }  # fmt: skip
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        _eventually(
            lambda: c.get("/admin/policy", headers=_bearer(tokens["operator"])).status_code == 200,
            "the new token to work",
        )
        for method, path, body, needed in ROUTES:
            for role, token in tokens.items():
                r = c.request(method, path, content=body, headers=_bearer(token))
                allowed = needed is None or role in (needed, "operator")
                if allowed:
                    assert r.status_code == 200, (path, role, r.text)
                else:
                    assert r.status_code == 403, (path, role)
                    problem = r.json()
                    assert problem["code"] == "admin.forbidden_role"
                    assert repr(needed) in problem["detail"]
                    assert problem["request_id"] == r.headers["x-request-id"]


def test_old_admin_token_files_are_operator_tokens(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token file from before roles (a JSON list of digests) still opens every route."""
    token = "gadm_from-an-older-release-0123456789abcdef"
    (gw.data_dir / ADMIN_TOKENS_FILE).write_text(f'["{key_hash(token)}"]')
    [entry] = load_admin_tokens(gw.data_dir).tokens
    assert entry.role == "operator"
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        _eventually(
            lambda: c.get("/metrics", headers=_bearer(token)).status_code == 200,
            "the old token to work",
        )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
