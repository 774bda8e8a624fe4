"""HMAC-SHA256 under a fixed key, with the key schedule done once.

``hmac.new(key, message, sha256)`` hashes the padded key into fresh inner and outer
states on every call. Copying states made once gives the same digest for 1.05
against 1.60 µs here; the request path computes three or more per lookup
(a pseudonym, the salts of the records' people).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["KeyedMac"]


class KeyedMac:
    """``HMAC-SHA256(key, message)``; the key is kept only inside the hash states."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def digest(self, message: bytes) -> bytes:
        mac = self._base.copy()
        mac.update(message)
        return mac.digest()

    def hexdigest(self, message: bytes) -> str:
        mac = self._base.copy()
        mac.update(message)
        return mac.hexdigest()
