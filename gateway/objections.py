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

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from gateway.audit.graph import IdentityStore, Linked, ObjectedPerson
from gateway.audit.people import PersonCommitter
from gateway.audit.pseudonym import Pseudonymizer, load_pseudonymizer
from gateway.audit.record import AuditRecord, rfc3339
from gateway.audit.store import AuditStore
from gateway.policies.model import Upstream
from gateway.requestid import RequestIds
from gateway.upstreams.registry import build_adapter


class AuditSink(Protocol):
    async def append(self, record: AuditRecord, index: Sequence[str] = ()) -> int: ...


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


class Recorder(msgspec.Struct, frozen=True):
    """Where objection acts are recorded: the log, request ids, the commitment salts."""

    audit: AuditSink
    request_ids: RequestIds
    committer: PersonCommitter

    async def record(
        self,
        kind: str,
        now: float,
        *,
        actor: str,
        role: str | None,
        upstream: str,
        pseudonyms: Sequence[str],
        count: int,
    ) -> None:
        record = objection_record(
            kind, now, self.request_ids.next_id(), self.committer,
            actor=actor, role=role, upstream=upstream, pseudonyms=pseudonyms, count=count,
        )  # fmt: skip
        # The pseudonyms go to the subject index, so the person's report shows the act.
        await self.audit.append(record, pseudonyms)


async def add(
    graph: IdentityStore,
    recorder: Recorder,
    upstream: str,
    pseudonyms: Sequence[str],
    *,
    actor: str,
    role: str | None = None,
) -> Added:
    """Link the pseudonyms into one person, object it, and audit the act.

    The objection is stored first: if the audit store then refuses the record the
    person is still protected, and the caller reports the failure (the graph and
    the log share one database, so both usually fail together)."""
    now = time.time()
    linked = await asyncio.to_thread(graph.object, pseudonyms, time=rfc3339(now), actor=actor)
    await recorder.record(
        "objection.add", now, actor=actor, role=role, upstream=upstream,
        pseudonyms=pseudonyms, count=linked.identifiers,
    )  # fmt: skip
    return Added(linked, tuple(pseudonyms))


async def remove(
    graph: IdentityStore,
    recorder: Recorder,
    upstream: str,
    pseudonyms: Sequence[str],
    *,
    actor: str,
    role: str | None = None,
) -> tuple[int, list[str]]:
    """Withdraw the objection of the person holding any of ``pseudonyms``; audit it."""
    now = time.time()
    people, named = await asyncio.to_thread(graph.withdraw, pseudonyms)
    await recorder.record(
        "objection.remove", now, actor=actor, role=role, upstream=upstream,
        pseudonyms=named, count=len(named),
    )  # fmt: skip
    return people, named


class StaffSession:
    """The store, graph, key and log a CLI command needs, opened and closed together."""

    def __init__(
        self,
        store: AuditStore,
        graph: IdentityStore,
        pseudonymizer: Pseudonymizer,
        recorder: Recorder | None,
        loop: asyncio.AbstractEventLoop,
        actor: str,
    ) -> None:
        self.store, self.graph, self.pseudonymizer = store, graph, pseudonymizer
        self._recorder, self._loop, self.actor = recorder, loop, actor

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        data_dir: Path,
        database_url: str | None,
        secret_file: Path | None,
        *,
        actor: str,
        log: bool = True,
    ) -> Iterator[StaffSession]:
        from gateway.audit.log import AuditLog
        from gateway.audit.signing import KeyRing

        pseudonymizer = load_pseudonymizer(data_dir, secret_file)
        store = AuditStore.open(data_dir=data_dir, url=database_url)
        loop = asyncio.new_event_loop()
        audit: AuditLog | None = None
        try:
            graph = IdentityStore(store.engine)
            graph.create()
            graph.bind_key(pseudonymizer.check_value())
            if log:
                audit = AuditLog(store, KeyRing.load_or_create(data_dir))
                loop.run_until_complete(audit.start())
            recorder = Recorder(audit, RequestIds(), pseudonymizer.committer()) if audit else None
            yield cls(store, graph, pseudonymizer, recorder, loop, actor)
        finally:
            if audit is not None:
                loop.run_until_complete(audit.close())
            loop.close()
            store.close()

    def add(self, upstream: str, pseudonyms: Sequence[str]) -> Added:
        assert self._recorder is not None
        return self._loop.run_until_complete(
            add(self.graph, self._recorder, upstream, pseudonyms, actor=self.actor)
        )

    def remove(self, upstream: str, pseudonyms: Sequence[str]) -> tuple[int, list[str]]:
        assert self._recorder is not None
        return self._loop.run_until_complete(
            remove(self.graph, self._recorder, upstream, pseudonyms, actor=self.actor)
        )

    def listing(self) -> list[ObjectedPerson]:
        return self.graph.objections()


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


def describe_removed(people: int, named: Sequence[str]) -> str:
    if not people and not named:
        return "no objection covers that person; nothing changed"
    return (
        f"withdrew the objection of {people} person(s) "
        f"({len(named)} pseudonym(s) it named); the links stay in the graph"
    )


def objection_record(
    kind: str,
    now: float,
    request_id: str,
    committer: PersonCommitter,
    *,
    actor: str,
    role: str | None,
    upstream: str,
    pseudonyms: Sequence[str],
    count: int,
) -> AuditRecord:
    """The ``objection.add`` / ``objection.remove`` record (decision 0001, section 6):
    the pseudonyms as salted commitments (role ``asked``, outcome ``objected``), the
    number of identifiers linked to the person, the actor and role."""
    return AuditRecord(
        kind=kind,
        time=rfc3339(now),
        request_id=request_id,
        upstream=upstream,
        people=committer.refs(request_id, ((p, "asked", "objected") for p in pseudonyms)),
        actor=actor,
        role=role,
        count=count,
    )


def short(pseudonym: str) -> str:
    """``hmac-sha256:1a2b3c4d…``: enough to tell entries apart, never an identifier."""
    return pseudonym[: len("hmac-sha256:") + 12] + "…"
