"""The ``gateway`` command's own subcommands: clients, objections, admin tokens, serve checks."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.clients import key_hash, load_admin_hashes, load_issued_keys
from gateway.policies.loader import read_policy
from tests.support.gateway import SHIPPED_POLICY, running_gateway


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    shutil.copy(SHIPPED_POLICY, path)
    return path


def test_clients_add_declares_the_client_and_stores_only_a_hash(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "var"
    code = main(
        [
            "clients",
            "add",
            "billing",
            "--kind",
            "crm",
            "--purpose",
            "sales",
            "--policies",
            str(policy),
            "--data-dir",
            str(data),
        ]
    )
    assert code == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("gk_")
    assert len(key) > 40
    issued = load_issued_keys(data).keys
    assert [(k.client, k.key_hash) for k in issued] == [("billing", key_hash(key))]
    assert key not in (data / "client-keys.json").read_text()
    assert (data / "client-keys.json").stat().st_mode & 0o077 == 0
    loaded = read_policy(policy).policy
    assert any(c.id == "billing" and c.kind == "crm" for c in loaded.clients)
    assert "# Upstreams" in policy.read_text()  # comments kept


def test_clients_add_refuses_an_unknown_purpose_and_leaves_the_file(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = policy.read_bytes()
    code = main(
        [
            "clients",
            "add",
            "x",
            "--kind",
            "crm",
            "--purpose",
            "salez",
            "--policies",
            str(policy),
            "--data-dir",
            str(tmp_path / "var"),
        ]
    )
    assert code == 1
    assert "salez" in capsys.readouterr().err
    assert policy.read_bytes() == before
    assert not (tmp_path / "var" / "client-keys.json").exists()


def test_objections_add_list_remove_print_no_identifier_and_audit_each_act(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An objection names one person by several identifiers; the store keeps only
    pseudonyms, the output only counts and shortened pseudonyms, and the add and the
    remove are both audit records that the person's subject access finds."""
    data = str(tmp_path / "var")
    common = ["--upstream", "klout", "--policies", str(policy), "--data-dir", data]
    assert main(["keys", "generate", "--data-dir", data]) == 0
    text = policy.read_text()
    capsys.readouterr()
    add = ["objections", "add", "--subject", "Bob_Example", "--subject", "twitter_id:1002"]
    assert main([*add, *common]) == 0
    out = capsys.readouterr().out
    assert "objected 1 person: 2 identifier(s) given, as 2 pseudonym(s)" in out
    assert "linked: 2 identifier(s) now belong to this person" in out
    assert policy.read_text() == text  # objections live in the store now
    assert main(["objections", "list", "--data-dir", data]) == 0
    listed = capsys.readouterr().out
    assert "2 identifier(s) linked" in listed
    assert "by cli:" in listed
    remove = ["objections", "remove", "--subject", "1002"]
    assert main([*remove, *common]) == 0
    assert "withdrew the objection of 1 person(s)" in capsys.readouterr().out
    assert main(["objections", "list", "--data-dir", data]) == 0
    assert capsys.readouterr().out == ""
    # Timestamps and pseudonyms are digits too: look for the identifier elsewhere.
    printed = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z|hmac-sha256:[0-9a-f]+", "", out + listed)
    assert "bob" not in printed.lower()
    assert "1002" not in printed

    export = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--out", str(export), "--data-dir", data]) == 0
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    records = [line["record"] for line in lines if line["type"] == "record"]
    acts = [r for r in records if r["kind"].startswith("objection.")]
    assert [a["kind"] for a in acts] == ["objection.add", "objection.remove"]
    assert acts[0]["count"] == 2
    assert acts[0]["actor"].startswith("cli:")
    assert [p["o"] for p in acts[0]["people"]] == ["objected", "objected"]
    assert "bob" not in export.read_text().lower()
    capsys.readouterr()
    assert main(["keys", "public", "--data-dir", data]) == 0
    keys = tmp_path / "keys.pem"
    keys.write_text(capsys.readouterr().out)
    assert main(["audit", "verify", str(export), "--public-key", str(keys)]) == 0
    capsys.readouterr()
    subject = ["audit", "subject", "--subject", "bob_example", *common]
    assert main(subject) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["record"]["kind"] for f in found] == ["objection.add", "objection.remove"]


def test_objections_add_refuses_an_identifier_the_api_does_not_use(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "var")
    assert main(["keys", "generate", "--data-dir", data]) == 0
    args = ["objections", "add", "--upstream", "klout", "--policies", str(policy)]
    assert main([*args, "--data-dir", data, "--subject", "ok_name", "--subject", "bad name!"]) == 1
    err = capsys.readouterr().err
    assert "identifier 2 is not one upstream 'klout' uses" in err
    assert "bad name" not in err


def test_admin_token_is_shown_once_and_stored_as_a_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin-token", "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert load_admin_hashes(tmp_path) == [key_hash(token)]
    assert token not in json.dumps(load_admin_hashes(tmp_path))


def test_serve_refuses_to_start_with_an_invalid_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policies.yaml"
    bad.write_text(SHIPPED_POLICY.read_text().replace("rules:", "rulez:"))
    assert main(["serve", "--policies", str(bad), "--data-dir", str(tmp_path / "var")]) == 1
    err = capsys.readouterr().err
    assert "policies.yaml:" in err
    assert "rulez" in err


def test_serve_refuses_to_start_with_a_corrupt_signing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "var"
    assert main(["keys", "generate", "--data-dir", str(data)]) == 0
    for pem in (data / "keys").glob("*.pem"):
        if "PRIVATE" in pem.read_text():
            pem.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    capsys.readouterr()
    assert main(["serve", "--demo", "--data-dir", str(data)]) == 1
    assert "audit.signing_key_invalid" in capsys.readouterr().err


def test_the_embedded_demo_policy_is_the_shipped_one() -> None:
    """``serve --demo`` outside a checkout falls back to the packaged
    gateway/demo/policies.yaml, a symlink to the shipped file, so they cannot drift."""
    from gateway.app import DEMO_POLICY

    assert DEMO_POLICY.read_bytes() == SHIPPED_POLICY.read_bytes()


def test_a_key_issued_while_the_gateway_runs_works_without_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policies.yaml"
    shutil.copy(SHIPPED_POLICY, policy)
    data = tmp_path / "var"
    with running_gateway(data, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        assert (
            main(
                [
                    "clients",
                    "add",
                    "crm",
                    "--kind",
                    "crm",
                    "--purpose",
                    "sales",
                    "--policies",
                    str(policy),
                    "--data-dir",
                    str(data),
                ]
            )
            == 0
        )
        key = capsys.readouterr().out.strip().splitlines()[-1]
        deadline = time.monotonic() + 5
        while True:  # the issued-keys file is looked at once a second
            r = c.get("/klout/v2/user.json/5001/score", params={"key": key})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200
        assert r.json()["score"] == 71.3
