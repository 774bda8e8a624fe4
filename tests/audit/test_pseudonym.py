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
