"""Caller identity: a gateway key names a client system; admin tokens open ``/admin``.

Keys are stored only as ``sha256:<hex>`` digests: in the policy file's ``key_hash``,
or in ``<data-dir>/client-keys.json`` (written by ``gateway clients add``). Keys are
32 random bytes, so a plain digest is safe to store (no guessable input), and a
lookup by digest followed by ``hmac.compare_digest`` keeps the comparison constant
in time. Client keys never open admin endpoints, and admin tokens never look up
scores: the two live in separate registries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from gateway.policies.compile import CompiledPolicy

log = logging.getLogger("gateway")

CLIENT_KEYS_FILE = "client-keys.json"
ADMIN_TOKENS_FILE = "admin-tokens.json"

DEMO_CLIENT_KEYS: dict[str, str] = {
    "demo-crm-key": "crm",
    "demo-support-key": "support-desk",
    "demo-hr-key": "ats",
    "demo-marketing-key": "email-marketing",
}
DEMO_ADMIN_TOKEN = "demo-admin-token"  # noqa: S105 - the documented demo token


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str) -> str:
    """A fresh key: a readable prefix and 32 random bytes."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


class IssuedKey(msgspec.Struct, frozen=True):
    client: str
    key_hash: str
    created: str


class IssuedKeys(msgspec.Struct):
    keys: list[IssuedKey] = []


class ClientKeys:
    """Every way a caller's key is known, kept current while the gateway runs.

    Three sources, by digest: fixed keys (the demo clients), ``key_hash`` entries of
    the active policy (re-indexed when a new policy version is loaded), and keys
    issued into ``<data-dir>/client-keys.json`` by ``gateway clients add`` (re-read
    when the file changes, looked at no more than once per ``refresh`` seconds), so a
    new key works without a restart.

    The presented key is hashed before any comparison, so the lookup's timing
    depends only on a SHA-256 digest the attacker cannot steer toward a stored one:
    no byte-by-byte comparison of secret material ever happens.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        fixed: dict[str, str] | None = None,
        refresh: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = data_dir / CLIENT_KEYS_FILE
        self._fixed = {key_hash(key): name for key, name in (fixed or {}).items()}
        self._refresh = refresh
        self._clock = clock
        self._checked_at = -refresh
        self._signature: tuple[int, int] | None = None
        self._issued: dict[str, str] = {}
        self._policy: tuple[str, dict[str, str]] = ("", {})

    def identify(self, presented: str, policy: CompiledPolicy) -> str | None:
        digest = key_hash(presented)
        name = self._fixed.get(digest)
        if name is not None:
            return name
        version, by_hash = self._policy
        if version != policy.version:
            by_hash = {c.key_hash: c.id for c in policy.clients.values() if c.key_hash}
            self._policy = (policy.version, by_hash)
        name = by_hash.get(digest)
        if name is not None:
            return name
        now = self._clock()
        if now - self._checked_at >= self._refresh:
            self._checked_at = now
            self._reload_issued()
        return self._issued.get(digest)

    def _reload_issued(self) -> None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._signature, self._issued = None, {}
            return
        except OSError as exc:
            log.error("cannot read %s, keeping the keys read before: %s", self._path, exc)
            return
        signature = (st.st_mtime_ns, st.st_size)
        if signature == self._signature:
            return
        try:
            issued = msgspec.json.decode(self._path.read_bytes(), type=IssuedKeys)
        except (OSError, msgspec.DecodeError) as exc:
            log.error("cannot read %s, keeping the keys read before: %s", self._path, exc)
            return
        self._signature = signature
        self._issued = {k.key_hash: k.client for k in issued.keys}


def load_issued_keys(data_dir: Path) -> IssuedKeys:
    path = data_dir / CLIENT_KEYS_FILE
    if not path.exists():
        return IssuedKeys()
    return msgspec.json.decode(path.read_bytes(), type=IssuedKeys)


def issue_client_key(data_dir: Path, client: str) -> str:
    """Create a key for ``client``, store its digest, return the key (shown once)."""
    key = new_key("gk")
    issued = load_issued_keys(data_dir)
    issued.keys.append(
        IssuedKey(
            client=client,
            key_hash=key_hash(key),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
    )
    _write_private(data_dir / CLIENT_KEYS_FILE, msgspec.json.format(msgspec.json.encode(issued)))
    return key


def issue_admin_token(data_dir: Path) -> str:
    token = new_key("gadm")
    path = data_dir / ADMIN_TOKENS_FILE
    hashes: list[str] = json.loads(path.read_text()) if path.exists() else []
    hashes.append(key_hash(token))
    _write_private(path, json.dumps(hashes, indent=2).encode())
    return token


def load_admin_hashes(data_dir: Path) -> list[str]:
    path = data_dir / ADMIN_TOKENS_FILE
    if not path.exists():
        return []
    hashes = json.loads(path.read_text())
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise ValueError(f"{path}: expected a JSON list of sha256 digests")
    return hashes


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def declare_client(
    policies: Path, client_id: str, kind: str, purposes: list[str], default_purpose: str | None
) -> bool:
    """Add a client entry to the policy file, keeping its comments; ``False`` if it exists.

    The new file is checked as a whole before it replaces the old one, so a typo
    in a purpose leaves the policy untouched and is reported like any policy error.
    """
    from gateway.policies.edit import append_to_list, write_checked
    from gateway.policies.loader import parse_policy

    text = policies.read_text(encoding="utf-8")
    current = parse_policy(text, filename=str(policies)).policy
    existing = next((c for c in current.clients if c.id == client_id), None)
    if existing is not None:
        if existing.kind != kind or sorted(existing.purposes) != sorted(purposes):
            raise ValueError(
                f"client {client_id!r} is already declared with kind {existing.kind!r} and "
                f"purposes {existing.purposes}; change it in {policies} instead"
            )
        return False
    entry: dict[str, object] = {"id": client_id, "kind": kind, "purposes": purposes}
    if default_purpose:
        entry["default_purpose"] = default_purpose
    write_checked(policies, append_to_list(text, "clients", [entry]))
    return True
