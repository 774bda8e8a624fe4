"""Back up and restore the data directory, as the README's steps do it.

The pseudonym secret (``subject-hmac.key``) is the one file whose loss cannot be
repaired: every objection and every pseudonym in the log is computed from it. A
restored directory must verify, and must still recognise the people it knew.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.audit.pseudonym import KEY_FILE, Pseudonymizer
from gateway.cli import main
from tests.support.gateway import copy_shipped_policy, running_gateway

CRM = {"key": "demo-crm-key"}


def _export_and_verify(data: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> bytes:
    keys = out.with_suffix(".pem")
    capsys.readouterr()
    assert main(["keys", "public", "--data-dir", str(data)]) == 0
    keys.write_text(capsys.readouterr().out)
    assert main(["audit", "export", "--data-dir", str(data), "--out", str(out)]) == 0
    assert main(["audit", "verify", str(out), "--public-key", str(keys)]) == 0
    capsys.readouterr()
    return out.read_bytes()


def test_a_restored_data_directory_verifies_and_knows_the_same_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the README's backup (stop, tar the data directory) and restore (untar into
    a new directory), the log verifies with the same records, the subject key matches
    the old pseudonyms, and subject access finds the lookups made before the backup."""
    policy = copy_shipped_policy(tmp_path)
    data = tmp_path / "var"
    assert main(
        ["objections", "add", "--upstream", "klout", "--subject", "carol_optedout",
         "--policies", str(policy), "--data-dir", str(data)]
    ) == 0  # fmt: skip
    with running_gateway(data, policies=policy) as gw, httpx.Client(base_url=gw.url) as c:
        for path in ("/klout/v2/user.json/5001/score", "/klout/v2/identity.json/tw/1001"):
            assert c.get(path, params=CRM).status_code == 200
    original = _export_and_verify(data, tmp_path / "original.jsonl", capsys)

    # The README's steps: the gateway is stopped; archive the directory; restore it.
    archive = tmp_path / "gateway-backup.tar.gz"
    subprocess.run(["tar", "-C", str(data), "-czf", str(archive), "."], check=True)
    restored = tmp_path / "var-restored"
    restored.mkdir()
    subprocess.run(["tar", "-C", str(restored), "-xzf", str(archive)], check=True)

    assert (restored / KEY_FILE).read_bytes() == (data / KEY_FILE).read_bytes()
    assert (restored / KEY_FILE).stat().st_mode & 0o077 == 0  # still private
    again = _export_and_verify(restored, tmp_path / "restored.jsonl", capsys)
    assert again.splitlines()[:-1] == original.splitlines()[:-1]  # all but the fresh seal

    # The subject key still matches the old pseudonyms: carol is already objected...
    assert main(
        ["objections", "add", "--upstream", "klout", "--subject", "carol_optedout",
         "--policies", str(policy), "--data-dir", str(restored)]
    ) == 0  # fmt: skip
    assert "(1 already known to the gateway)" in capsys.readouterr().out
    old = Pseudonymizer.load_or_create(data).pseudonym("twitter_id", "1001")
    assert Pseudonymizer.load_or_create(restored).pseudonym("twitter_id", "1001") == old
    # ...and subject access on the restored directory finds alice's earlier lookups.
    assert main(
        ["audit", "subject", "--upstream", "klout", "--subject", "1001",
         "--policies", str(policy), "--data-dir", str(restored)]
    ) == 0  # fmt: skip
    found = capsys.readouterr()
    count = int(found.err.split()[0])
    assert count >= 1, found.err
    assert len(found.out.splitlines()) == count
    assert "alice" not in found.out
