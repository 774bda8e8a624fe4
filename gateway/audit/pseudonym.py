"""Keyed pseudonyms for subjects: HMAC-SHA256 under a key kept in the data directory.

A plain hash of a Twitter handle is reversible by guessing handles; a keyed HMAC
is not, without the key. The same pseudonym names a subject in audit records and
in the policy's objection list, so subject access and objections need no raw id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from gateway.audit.people import PersonCommitter

KEY_FILE = "subject-hmac.key"


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the subject HMAC key must be at least 32 bytes")
        self._key = key

    def pseudonym(self, namespace: str, identifier: str) -> str:
        """``hmac-sha256:<hex>`` of ``namespace`` and ``identifier``, unambiguously joined."""
        message = namespace.encode() + b"\x00" + identifier.encode()
        return "hmac-sha256:" + hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def derive(self, label: bytes) -> bytes:
        """A separate key for another purpose (neutral identifiers), from the same secret."""
        return hmac.new(self._key, b"derive\x00" + label, hashlib.sha256).digest()

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
