"""Keyed pseudonyms for subjects: HMAC-SHA256 under one key shared by every replica.

A plain hash of a Twitter handle is reversible by guessing handles; a keyed HMAC
is not, without the key. The same pseudonym names a subject in audit records, in
the identity graph and in objections, so subject access and objections need no
raw id, and every replica must compute the same one.

Where the key comes from (:func:`load_pseudonymizer`):

* a secret the operator gives once, the same to every replica:
  ``GATEWAY_PSEUDONYM_SECRET`` (at least 32 characters) or a file named by
  ``--pseudonym-secret-file`` / ``GATEWAY_PSEUDONYM_SECRET_FILE``. The key is an
  HMAC of the secret under a fixed label, so the secret itself is never used
  directly as a key;
* otherwise the data directory's ``subject-hmac.key``, generated on first use
  (one machine, ``--demo``, workers of one data directory).

The store keeps a check value of the key (:meth:`Pseudonymizer.check_value`), so a
replica started with another key refuses to write a log whose pseudonyms it could
not match.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from gateway.audit.people import PersonCommitter
from gateway.mac import KeyedMac

KEY_FILE = "subject-hmac.key"
SECRET_ENV = "GATEWAY_PSEUDONYM_SECRET"  # noqa: S105  # a variable's name, not a secret
SECRET_FILE_ENV = "GATEWAY_PSEUDONYM_SECRET_FILE"  # noqa: S105  # likewise
MIN_SECRET = 32


class PseudonymKeyError(Exception):
    """The pseudonym secret is missing, too short or unreadable."""


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the subject HMAC key must be at least 32 bytes")
        self._key = key
        self._mac = KeyedMac(key)

    def pseudonym(self, namespace: str, identifier: str) -> str:
        """``hmac-sha256:<hex>`` of ``namespace`` and ``identifier``, unambiguously joined."""
        message = namespace.encode() + b"\x00" + identifier.encode()
        return "hmac-sha256:" + self._mac.hexdigest(message)

    def derive(self, label: bytes) -> bytes:
        """A separate key for another purpose (neutral identifiers), from the same secret."""
        return hmac.new(self._key, b"derive\x00" + label, hashlib.sha256).digest()

    def check_value(self) -> str:
        """A value that names this key without revealing it (kept in the store)."""
        return "hmac-sha256:" + self.derive(b"key-check").hex()[:32]

    @classmethod
    def from_secret(cls, secret: bytes) -> Pseudonymizer:
        if len(secret.strip()) < MIN_SECRET:
            raise PseudonymKeyError(
                f"the pseudonym secret must be at least {MIN_SECRET} characters "
                f"(got {len(secret.strip())})"
            )
        return cls(hmac.new(secret.strip(), b"score-gateway pseudonym key v1", "sha256").digest())

    def committer(self) -> PersonCommitter:
        """Opens and makes the commitments that name people in format-2 records."""
        return PersonCommitter(self.derive(b"person-commitment-salt"))

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Pseudonymizer:
        """Read the key from ``data_dir``, creating it (mode 0600) on first use."""
        path = data_dir / KEY_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        return cls(path.read_bytes())


def load_pseudonymizer(
    data_dir: Path,
    secret_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Pseudonymizer:
    """The key from the operator's secret if one is given, else the data directory's.

    Order: ``secret_file``, then ``GATEWAY_PSEUDONYM_SECRET_FILE``, then
    ``GATEWAY_PSEUDONYM_SECRET``, then ``<data_dir>/subject-hmac.key``.
    """
    env = os.environ if environ is None else environ
    path = secret_file or (Path(env[SECRET_FILE_ENV]) if env.get(SECRET_FILE_ENV) else None)
    if path is not None:
        try:
            return Pseudonymizer.from_secret(path.read_bytes())
        except OSError as exc:
            raise PseudonymKeyError(
                f"cannot read the pseudonym secret file {path}: {exc.strerror}"
            ) from None
    if secret := env.get(SECRET_ENV):
        return Pseudonymizer.from_secret(secret.encode())
    return Pseudonymizer.load_or_create(data_dir)
