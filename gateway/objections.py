"""Objections (GDPR Art. 21) as staff make them: add, list, remove, each audited.

An objection names a person by one or more identifiers at one upstream. Each
identifier becomes its keyed pseudonyms (a bare number may be a Twitter, Google+,
Instagram or Klout id at Klout: it becomes one pseudonym per id space, unless the
operator writes ``twitter_id:1002``), they are linked into one person in the
identity graph, and the person is objected: every identifier linked to them, now
or later, is answered neutral without contacting the upstream. Objections live in
the store, so every replica honours them within a second.

The policy file's ``objections:`` list (written by earlier versions of
``gateway objections add``) is still read and counts as objections in the graph;
new objections go to the store only.

Nothing here prints or records an identifier: output and audit records carry
pseudonyms (records: salted commitments), counts and the actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.audit.graph import IdentityStore, Linked, ObjectedPerson
from gateway.audit.pseudonym import Pseudonymizer
from gateway.policies.model import Upstream
from gateway.upstreams.registry import build_adapter


class ObjectionError(ValueError):
    """An identifier this upstream does not use, or another operator mistake."""


@dataclass(frozen=True, slots=True)
class Added:
    linked: Linked
    pseudonyms: tuple[str, ...]  # of the identifiers given


def pseudonyms_of(
    upstream: Upstream, pseudonymizer: Pseudonymizer, identifiers: Sequence[str]
) -> tuple[str, ...]:
    """Every pseudonym the given identifiers may carry at ``upstream``.

    ``NAMESPACE:IDENTIFIER`` (``twitter_id:1002``) narrows a bare number to one id
    space. Raises :class:`ObjectionError` naming the position, never the value."""
    adapter = build_adapter(upstream, bytes(32))  # the id key plays no part here
    out: list[str] = []
    for position, identifier in enumerate(identifiers, 1):
        namespace, sep, rest = identifier.partition(":")
        subjects = adapter.subjects_for(rest if sep else identifier)
        if sep:
            narrowed = tuple(s for s in subjects if s.namespace == namespace)
            # A generic adapter's identifiers may contain ":" themselves (URLs).
            subjects = narrowed or adapter.subjects_for(identifier)
        if not subjects:
            raise ObjectionError(
                f"identifier {position} is not one upstream {upstream.name!r} uses"
            )
        out += [pseudonymizer.pseudonym(s.namespace, s.identifier) for s in subjects]
    return tuple(dict.fromkeys(out))


def add(graph: IdentityStore, pseudonyms: Sequence[str], *, time: str, actor: str) -> Added:
    """Link the pseudonyms into one person and object it (no audit record: see callers)."""
    return Added(graph.object(pseudonyms, time=time, actor=actor), tuple(pseudonyms))


def remove(graph: IdentityStore, pseudonyms: Sequence[str]) -> tuple[int, list[str]]:
    """Withdraw the objection of the person holding any of ``pseudonyms``."""
    return graph.withdraw(pseudonyms)


def listing(graph: IdentityStore) -> list[ObjectedPerson]:
    return graph.objections()


def describe_added(added: Added, given: int) -> list[str]:
    """What ``gateway objections add`` prints: counts and short pseudonyms only."""
    linked = added.linked
    already = linked.identifiers - linked.new
    lines = [
        f"objected 1 person: {given} identifier(s) given, as {len(added.pseudonyms)} "
        f"pseudonym(s): {', '.join(short(p) for p in added.pseudonyms)}",
        f"linked: {linked.identifiers} identifier(s) now belong to this person "
        f"({already} already known to the gateway"
        + (f", {linked.merged} other person record(s) merged" if linked.merged else "")
        + ")",
    ]
    return lines


def short(pseudonym: str) -> str:
    """``hmac-sha256:1a2b3c4d…``: enough to tell entries apart, never an identifier."""
    return pseudonym[: len("hmac-sha256:") + 12] + "…"
