"""Where the pseudonym key comes from: the operator's secret, or the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit.pseudonym import KEY_FILE, PseudonymKeyError, load_pseudonymizer

SECRET = "s3cret-shared-by-every-replica-0123456789"


def test_one_secret_gives_every_replica_the_same_pseudonyms(tmp_path: Path) -> None:
    """Two data directories, one secret: the same pseudonym and check value, and no
    key file written (the secret is the only source)."""
    env = {"GATEWAY_PSEUDONYM_SECRET": SECRET}
    a = load_pseudonymizer(tmp_path / "a", environ=env)
    b = load_pseudonymizer(tmp_path / "b", environ=env)
    assert a.pseudonym("twitter_id", "1001") == b.pseudonym("twitter_id", "1001")
    assert a.check_value() == b.check_value()
    assert not (tmp_path / "a" / KEY_FILE).exists()


def test_a_secret_file_wins_and_matches_the_same_secret_in_the_environment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # a trailing newline from an editor changes nothing
    from_file = load_pseudonymizer(tmp_path, path, environ={"GATEWAY_PSEUDONYM_SECRET": "x" * 40})
    from_env = load_pseudonymizer(tmp_path, environ={"GATEWAY_PSEUDONYM_SECRET": SECRET})
    assert from_file.check_value() == from_env.check_value()


def test_without_a_secret_the_data_directory_keeps_its_own_key(tmp_path: Path) -> None:
    first = load_pseudonymizer(tmp_path, environ={})
    again = load_pseudonymizer(tmp_path, environ={})
    other = load_pseudonymizer(tmp_path / "other", environ={})
    assert (tmp_path / KEY_FILE).exists()
    assert first.check_value() == again.check_value() != other.check_value()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"GATEWAY_PSEUDONYM_SECRET": "short"}, "at least 32", id="too-short"),
        pytest.param({"GATEWAY_PSEUDONYM_SECRET": " " * 40}, "at least 32", id="only-whitespace"),
        pytest.param(
            {"GATEWAY_PSEUDONYM_SECRET_FILE": "/nonexistent/secret"},
            "cannot read the pseudonym secret file",
            id="missing-file",
        ),
    ],
)
def test_a_bad_secret_is_refused_with_a_clear_message(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(PseudonymKeyError, match=message) as raised:
        load_pseudonymizer(tmp_path, environ=environ)
    secret = environ.get("GATEWAY_PSEUDONYM_SECRET", "").strip()
    if secret:
        assert secret not in str(raised.value)  # the secret itself is never echoed


@pytest.mark.parametrize("key_length", [32, 64, 65, 200])
def test_keyed_mac_is_hmac_sha256_and_stays_so_after_many_uses(key_length: int) -> None:
    """The precomputed key schedule gives RFC 2104's digest (keys longer than a
    block are hashed first), and no call changes the next one."""
    import hashlib
    import hmac

    from gateway.mac import KeyedMac

    key = bytes(range(256))[:key_length]
    mac = KeyedMac(key)
    for message in (b"", b"twitter_id\x001001", b"x" * 1000, b"twitter_id\x001001"):
        assert mac.digest(message) == hmac.new(key, message, hashlib.sha256).digest()
        assert mac.hexdigest(message) == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_pseudonyms_and_salts_are_the_documented_hmacs() -> None:
    """The format stays what auditors recompute: ``hmac-sha256:`` + HMAC(key,
    namespace 0x00 identifier), and a salt of HMAC(K_salt, request_id 0x00 position)."""
    import hashlib
    import hmac

    from gateway.audit.pseudonym import Pseudonymizer

    key = b"k" * 32
    p = Pseudonymizer(key)
    expected = hmac.new(key, b"twitter_id\x001001", hashlib.sha256).hexdigest()
    assert p.pseudonym("twitter_id", "1001") == "hmac-sha256:" + expected
    salt_key = p.derive(b"person-commitment-salt")
    salt = hmac.new(salt_key, b"req-1\x002", hashlib.sha256).digest()[:16]
    assert p.committer().salt("req-1", 2) == salt
