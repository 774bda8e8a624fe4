"""Caller identity: a gateway key names a client system; admin tokens open ``/admin``.

Keys are stored only as ``sha256:<hex>`` digests: in the policy file's ``key_hash``,
or in ``<data-dir>/client-keys.json`` (written by ``gateway clients add|rotate-key``).
Keys are 32 random bytes, so a plain digest is safe to store (no guessable input),
and a lookup by digest keeps the comparison constant in time. Client keys never open
admin endpoints, and admin tokens never look up scores: the two live in separate
registries.

Both registries are files the CLI writes and the running gateway re-reads (at most
every ``refresh`` seconds, on every lookup, hits included): a new key or token works
without a restart, and a revoked one stops working within ``refresh``.

Admin tokens carry a role (``<data-dir>/admin-tokens.json``):

======== =====================================================================
auditor  audit export, subject access, reports, consistency proofs
policy   validate, explain, replay and apply policy changes
operator everything (metrics, and every act of the other two roles)
======== =====================================================================

Every admin act is audited under the token's ``id`` (never the token) and role.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

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
DEMO_ADMIN_ID = "demo-admin"

Role = Literal["auditor", "policy", "operator"]
ROLES: tuple[Role, ...] = get_args(Role)
#: ``gateway admin-token`` without ``--role``: operator, so tokens made before roles
#: existed, and scripts that make them, keep every power they had.
DEFAULT_ROLE: Role = "operator"


def role_allows(role: Role, needed: Role | None) -> bool:
    """Whether a token of ``role`` may do an act that needs ``needed`` (None: any role)."""
    return needed is None or role == needed or role == "operator"


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str) -> str:
    """A fresh key: a readable prefix and 32 random bytes."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def fingerprint(digest: str) -> str:
    """A short, printable prefix of a key's digest: enough to tell keys apart in a
    listing, far too little to help guess the key."""
    return digest.removeprefix("sha256:")[:12]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class IssuedKey(msgspec.Struct, frozen=True, omit_defaults=True):
    client: str
    key_hash: str
    created: str
    revoked: str | None = None  # RFC 3339 time of revocation; the key no longer works


class IssuedKeys(msgspec.Struct):
    keys: list[IssuedKey] = []

    def active(self, client: str) -> list[IssuedKey]:
        return [k for k in self.keys if k.client == client and k.revoked is None]


class AdminToken(msgspec.Struct, frozen=True, omit_defaults=True):
    """One admin token as stored: its id (named in audit records), role and digest."""

    id: str
    role: Role
    key_hash: str
    created: str = ""
    revoked: str | None = None


class AdminTokensFile(msgspec.Struct):
    tokens: list[AdminToken] = []


class _WatchedFile:
    """A file the CLI rewrites (always by ``os.replace``) and the gateway re-reads.

    ``changed()`` costs one clock read; a ``stat`` at most every ``refresh`` seconds.
    The inode is part of the signature, so a rewrite of equal size in the same
    nanosecond is still seen.
    """

    def __init__(self, path: Path, refresh: float, clock: Callable[[], float]) -> None:
        self.path = path
        self._refresh = refresh
        self._clock = clock
        self._checked_at = -refresh
        self._signature: tuple[int, int, int] | None = None

    def changed(self) -> bool | None:
        """True: read it again; None: it is gone; False: nothing to do."""
        now = self._clock()
        if now - self._checked_at < self._refresh:
            return False
        self._checked_at = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._signature is None:
                return False
            self._signature = None
            return None
        except OSError as exc:
            log.error("cannot read %s, keeping what was read before: %s", self.path, exc)
            return False
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._signature:
            return False
        self._signature = signature
        return True

    def forget(self) -> None:
        """Read the file again at the next look (its last read failed)."""
        self._signature = None


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
        self._file = _WatchedFile(data_dir / CLIENT_KEYS_FILE, refresh, clock)
        self._fixed = {key_hash(key): name for key, name in (fixed or {}).items()}
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
        # Looked at on hits too: a revoked key must stop working, not only new ones start.
        changed = self._file.changed()
        if changed is None:
            self._issued = {}
        elif changed:
            self._reload_issued()
        return self._issued.get(digest)

    def _reload_issued(self) -> None:
        try:
            issued = msgspec.json.decode(self._file.path.read_bytes(), type=IssuedKeys)
        except (OSError, msgspec.DecodeError) as exc:
            log.error("cannot read %s, keeping the keys read before: %s", self._file.path, exc)
            self._file.forget()
            return
        self._issued = {k.key_hash: k.client for k in issued.keys if k.revoked is None}


class AdminTokens:
    """Admin tokens by digest: fixed ones (demo, settings) and ``admin-tokens.json``,
    re-read while the gateway runs like :class:`ClientKeys`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fixed: list[AdminToken] | None = None,
        refresh: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._file = _WatchedFile(data_dir / ADMIN_TOKENS_FILE, refresh, clock)
        self._fixed = {t.key_hash: t for t in fixed or []}
        self._issued: dict[str, AdminToken] = {}

    def identify(self, presented: str) -> AdminToken | None:
        digest = key_hash(presented)
        token = self._fixed.get(digest)
        if token is not None:
            return token
        changed = self._file.changed()
        if changed is None:
            self._issued = {}
        elif changed:
            try:
                tokens = load_admin_tokens(self._file.path.parent).tokens
            except (OSError, ValueError) as exc:
                log.error(
                    "cannot read %s, keeping the tokens read before: %s", self._file.path, exc
                )
                self._file.forget()
            else:
                self._issued = {t.key_hash: t for t in tokens if t.revoked is None}
        return self._issued.get(digest)


def load_issued_keys(data_dir: Path) -> IssuedKeys:
    path = data_dir / CLIENT_KEYS_FILE
    if not path.exists():
        return IssuedKeys()
    return msgspec.json.decode(path.read_bytes(), type=IssuedKeys)


class ClientKeyExists(ValueError):
    """``clients add`` for a client that already holds a working key."""


def _write_issued(data_dir: Path, issued: IssuedKeys) -> None:
    _write_private(data_dir / CLIENT_KEYS_FILE, msgspec.json.format(msgspec.json.encode(issued)))


def issue_client_key(data_dir: Path, client: str) -> str:
    """Create the first key of ``client``, store its digest, return the key (shown once).

    A client that already holds a working key is refused (:class:`ClientKeyExists`):
    a second ``clients add`` must not leave two keys working where the operator
    meant one. :func:`rotate_client_key` replaces a key.
    """
    issued = load_issued_keys(data_dir)
    active = issued.active(client)
    if active:
        raise ClientKeyExists(
            f"client {client!r} already has a working key ({fingerprint(active[0].key_hash)}); "
            f"use `gateway clients rotate-key {client}` to replace it"
        )
    key = new_key("gk")
    issued.keys.append(IssuedKey(client=client, key_hash=key_hash(key), created=_now()))
    _write_issued(data_dir, issued)
    return key


def revoke_client_keys(data_dir: Path, client: str) -> list[IssuedKey]:
    """Mark every working key of ``client`` revoked; return those keys (before)."""
    issued = load_issued_keys(data_dir)
    now = _now()
    revoked = issued.active(client)
    issued.keys = [
        msgspec.structs.replace(k, revoked=now) if k in revoked else k for k in issued.keys
    ]
    if revoked:
        _write_issued(data_dir, issued)
    return revoked


def rotate_client_key(data_dir: Path, client: str) -> tuple[str, list[IssuedKey]]:
    """A new key for ``client``; its old keys are revoked in the same write, so there
    is no moment with both or neither working. Returns the key and the revoked ones."""
    issued = load_issued_keys(data_dir)
    now = _now()
    revoked = issued.active(client)
    key = new_key("gk")
    issued.keys = [
        msgspec.structs.replace(k, revoked=now) if k in revoked else k for k in issued.keys
    ]
    issued.keys.append(IssuedKey(client=client, key_hash=key_hash(key), created=now))
    _write_issued(data_dir, issued)
    return key, revoked


def issue_admin_token(data_dir: Path, role: Role = DEFAULT_ROLE) -> tuple[AdminToken, str]:
    """A new admin token of ``role``: its stored entry and the token (shown once)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    token = new_key("gadm")
    stored = load_admin_tokens(data_dir)
    taken = {t.id for t in stored.tokens}
    token_id = "adm-" + secrets.token_hex(4)
    while token_id in taken:  # pragma: no cover - 32 random bits
        token_id = "adm-" + secrets.token_hex(4)
    entry = AdminToken(id=token_id, role=role, key_hash=key_hash(token), created=_now())
    stored.tokens.append(entry)
    _write_private(data_dir / ADMIN_TOKENS_FILE, msgspec.json.format(msgspec.json.encode(stored)))
    return entry, token


def load_admin_tokens(data_dir: Path) -> AdminTokensFile:
    """The stored admin tokens. A file from before roles (a JSON list of digests) is
    read as operator tokens, ids taken from their digests."""
    path = data_dir / ADMIN_TOKENS_FILE
    if not path.exists():
        return AdminTokensFile()
    raw = path.read_bytes()
    try:
        return msgspec.json.decode(raw, type=AdminTokensFile)
    except msgspec.DecodeError:
        pass
    try:
        hashes = msgspec.json.decode(raw, type=list[str])
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path}: not an admin token file: {exc}") from None
    return AdminTokensFile(tokens=[legacy_admin_token(h) for h in hashes])


def legacy_admin_token(digest: str) -> AdminToken:
    """An operator token known only by its digest (old files, settings)."""
    return AdminToken(id="adm-" + fingerprint(digest)[:8], role="operator", key_hash=digest)


def load_admin_hashes(data_dir: Path) -> list[str]:
    return [t.key_hash for t in load_admin_tokens(data_dir).tokens if t.revoked is None]


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
    A client registered for one purpose gets it as its default, so a caller that
    sends no ``X-Purpose`` (an unmodified client library) is not refused with
    ``purpose.missing`` on its first call.
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
    if default_purpose is None and len(purposes) == 1:
        default_purpose = purposes[0]
    entry: dict[str, object] = {"id": client_id, "kind": kind, "purposes": purposes}
    if default_purpose:
        entry["default_purpose"] = default_purpose
    write_checked(policies, append_to_list(text, "clients", [entry]))
    return True
