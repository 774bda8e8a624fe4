"""People in audit records: salted commitments to their pseudonyms.

A format-2 record names each person it concerns as ``c = SHA-256("gw-person-v2"
0x00 salt 0x00 pseudonym)[:16]`` (32 hex digits), never as the pseudonym itself.
The salt is ``HMAC-SHA256(K_salt, request_id 0x00 position)[:16]``, with
``K_salt`` derived from the pseudonym secret, so the gateway can recompute it and
nobody else can:

* a subject report hands a person whole records about them, for inclusion proofs;
  the other people in those records stay hidden behind commitments whose salts
  the person does not get, and cannot be matched across records;
* for the person it concerns, the report gives ``(position, salt, pseudonym)``,
  and :func:`commitment` recomputes ``c`` at that position.

Finding a person's records is the store's subject index (pseudonym → seq), which
is neither signed nor exported. See docs/decisions/0001-audit-record-format.md §4.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

from gateway.audit.record import AnyRecord, AuditRecord, AuditRecordV1, PersonRef, PersonRole
from gateway.mac import KeyedMac

__all__ = ["PersonCommitter", "PersonMatch", "commitment"]

_LABEL = b"gw-person-v2\x00"
SALT_BYTES = 16
COMMITMENT_HEX = 32


def commitment(salt: bytes, pseudonym: str) -> str:
    """The commitment to ``pseudonym`` under ``salt``, as stored in ``PersonRef.c``."""
    digest = hashlib.sha256(_LABEL + salt + b"\x00" + pseudonym.encode()).hexdigest()
    return digest[:COMMITMENT_HEX]


class PersonMatch(tuple[int, str, bytes]):
    """``(position, pseudonym, salt)``: where a person sits in one record, with the
    salt that opens the commitment there."""

    __slots__ = ()

    @property
    def position(self) -> int:
        return self[0]

    @property
    def pseudonym(self) -> str:
        return self[1]

    @property
    def salt(self) -> bytes:
        return self[2]


class PersonCommitter:
    """Makes and opens the people of format-2 records; one per pseudonym secret."""

    __slots__ = ("_mac",)

    def __init__(self, salt_key: bytes) -> None:
        if len(salt_key) < 32:
            raise ValueError("the commitment salt key must be at least 32 bytes")
        self._mac = KeyedMac(salt_key)

    def salt(self, request_id: str, position: int) -> bytes:
        message = request_id.encode() + b"\x00" + str(position).encode()
        return self._mac.digest(message)[:SALT_BYTES]

    def refs(
        self,
        request_id: str,
        people: Iterable[tuple[str, PersonRole, str | None]],
    ) -> list[PersonRef]:
        """``PersonRef``s for ``(pseudonym, role, outcome)`` triples, in order."""
        return [
            PersonRef(c=commitment(self.salt(request_id, i), p), r=role, o=outcome)
            for i, (p, role, outcome) in enumerate(people)
        ]

    def find(self, record: AnyRecord, pseudonyms: Sequence[str]) -> Iterator[PersonMatch]:
        """Where any of ``pseudonyms`` appears in ``record``.

        Format 2: by recomputing commitments; format 1: the pseudonyms in clear.
        """
        if isinstance(record, AuditRecordV1):
            for i, p in enumerate(record.subjects):
                if p in pseudonyms:
                    yield PersonMatch((i, p, b""))
            return
        assert isinstance(record, AuditRecord)
        for i, ref in enumerate(record.people):
            salt = self.salt(record.request_id, i)
            for p in pseudonyms:
                if commitment(salt, p) == ref.c:
                    yield PersonMatch((i, p, salt))
                    break
