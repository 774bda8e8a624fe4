"""Ed25519 signing keys for checkpoints: a key ring in ``<data_dir>/keys/``.

Layout::

    keys/ACTIVE                  the key id that signs new checkpoints (one line)
    keys/<key_id>.private.pem    PKCS#8 PEM private key, mode 0600 (active key only)
    keys/<key_id>.public.pem     SubjectPublicKeyInfo PEM (kept for every key ever used)

``key_id`` is the first 16 hex digits of SHA-256 over the 32 raw public key bytes,
so anyone holding the public key can recompute it. :meth:`KeyRing.rotate` makes a
new active key, keeps every old ``.pub`` (old checkpoints and exports stay
verifiable) and deletes the retired private key, so it can no longer sign.

A key that exists but cannot be read or parsed is an error, never a reason to make
a new key: a silently replaced key would let a restart rewrite history unnoticed
(reliability catalogue (2) #13). The caller maps :class:`SigningKeyError` to a
non-zero exit with its ``code``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import GatewayError

KEYS_DIR = "keys"
ACTIVE_FILE = "ACTIVE"
PRIVATE_SUFFIX = ".private.pem"
PUBLIC_SUFFIX = ".public.pem"


class SigningKeyError(GatewayError):
    """The signing key is missing, unreadable or not an Ed25519 key: refuse to start."""

    status, title, code = 500, "Signing key unusable", "audit.signing_key_invalid"


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """``sha256:`` and the 64 hex digits of SHA-256 over the raw key; the key id is its
    first 16 digits. Compare it in full with the one published out of band."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_keys(pem: bytes) -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM bundle (several blocks may be concatenated), by id."""
    marker = b"-----BEGIN PUBLIC KEY-----"
    keys: dict[str, Ed25519PublicKey] = {}
    blocks = [marker + part for part in pem.split(marker)[1:]]
    if not blocks:
        raise ValueError("no PEM public key block found")
    for index, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as exc:
            raise ValueError(f"PEM block {index} is not a public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"PEM block {index} is not an Ed25519 public key")
        keys[key_id_of(key)] = key
    return keys


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all (temp file, fsync, rename, fsync of the dir)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class KeyRing:
    """The active signing key and every public key this log has used."""

    def __init__(
        self, directory: Path, active: Ed25519PrivateKey, public: dict[str, Ed25519PublicKey]
    ):
        self.directory = directory
        self._active = active
        self.key_id = key_id_of(active.public_key())
        self.public_keys = dict(public)
        self.public_keys[self.key_id] = active.public_key()

    @property
    def private_key_path(self) -> Path:
        """The active key's private key file."""
        return self.directory / f"{self.key_id}{PRIVATE_SUFFIX}"

    def sign(self, message: bytes) -> bytes:
        return self._active.sign(message)

    def public_pem(self, key_id: str | None = None) -> bytes:
        return public_pem(self.public_keys[key_id or self.key_id])

    def public_pems(self) -> bytes:
        """Every public key, active last, as concatenated PEM blocks."""
        ids = [*sorted(k for k in self.public_keys if k != self.key_id), self.key_id]
        return b"".join(self.public_pem(k) for k in ids)

    # -- the directory ------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: Path) -> KeyRing:
        """Load the ring; raise :class:`SigningKeyError` if there is none or it is unusable."""
        directory = data_dir / KEYS_DIR
        active_path = directory / ACTIVE_FILE
        if not active_path.exists():
            raise SigningKeyError(
                f"no signing key in {directory} (run `gateway keys generate`)",
                code="audit.signing_key_missing",
            )
        try:
            key_id = active_path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SigningKeyError(f"cannot read {active_path}: {exc}") from None
        if not key_id:
            raise SigningKeyError(
                f"{active_path} is empty: it must name the active key id",
                code="audit.signing_key_missing",
            )
        if not re.fullmatch(r"[0-9a-f]{16}", key_id):
            # Also keeps a crafted ACTIVE (``../x``) from choosing another path.
            raise SigningKeyError(
                f"{active_path} must hold the active key id (16 hex digits), found {key_id[:40]!r}"
            )
        private_path = directory / f"{key_id}{PRIVATE_SUFFIX}"
        try:
            pem = private_path.read_bytes()
        except FileNotFoundError:
            raise SigningKeyError(
                f"the active signing key {key_id!r} has no private key file {private_path}",
                code="audit.signing_key_missing",
            ) from None
        except OSError as exc:
            raise SigningKeyError(f"cannot read {private_path}: {exc.strerror}") from None
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{private_path} is not a usable private key: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise SigningKeyError(f"{private_path} is not an Ed25519 private key")
        if key_id_of(private.public_key()) != key_id:
            raise SigningKeyError(f"{private_path} holds a key whose id is not {key_id!r}")
        public: dict[str, Ed25519PublicKey] = {}
        for pub_path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
            try:
                found = load_public_keys(pub_path.read_bytes())
            except (OSError, ValueError) as exc:
                raise SigningKeyError(f"{pub_path} is not a usable public key: {exc}") from None
            public.update(found)
        return cls(directory, private, public)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> KeyRing:
        """Load the ring, creating a first key only when the key directory has no key at all."""
        directory = data_dir / KEYS_DIR
        if directory.exists() and any(
            p.name.endswith(".pem") or p.name == ACTIVE_FILE for p in directory.iterdir()
        ):
            return cls.load(data_dir)
        return cls.generate(data_dir)

    @classmethod
    def generate(cls, data_dir: Path) -> KeyRing:
        """Create the first key; refuse if a key already exists (use :meth:`rotate`)."""
        directory = data_dir / KEYS_DIR
        if (directory / ACTIVE_FILE).exists():
            raise SigningKeyError(
                f"{directory} already has a signing key; use `gateway keys rotate`",
                code="audit.signing_key_exists",
            )
        return cls._install(directory, Ed25519PrivateKey.generate(), {})

    def rotate(self) -> KeyRing:
        """Make a new active key; keep all public keys; delete the retired private key."""
        old_id = self.key_id
        ring = self._install(self.directory, Ed25519PrivateKey.generate(), self.public_keys)
        (self.directory / f"{old_id}{PRIVATE_SUFFIX}").unlink(missing_ok=True)
        return ring

    @classmethod
    def _install(
        cls, directory: Path, private: Ed25519PrivateKey, public: dict[str, Ed25519PublicKey]
    ) -> KeyRing:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_id = key_id_of(private.public_key())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(directory / f"{key_id}{PRIVATE_SUFFIX}", pem, 0o600)
        write_atomic(
            directory / f"{key_id}{PUBLIC_SUFFIX}", public_pem(private.public_key()), 0o644
        )
        # The pointer moves last: a crash before this line leaves the old key active.
        write_atomic(directory / ACTIVE_FILE, f"{key_id}\n".encode(), 0o644)
        return cls(directory, private, public)
