"""A person is the unit: the pseudonymous identity graph as the request path sees it.

An upstream answer that resolves one identifier to another (a screen name to a
kloutId, a kloutId back to a Twitter id) shows that one person holds both; so does
staff naming several identifiers in one objection. The graph links their keyed
pseudonyms into one person (never an identifier in clear, see
:mod:`gateway.audit.graph` for the tables), and every question the request path
asks is about the person:

* ``is_objected(pseudonym)``: is the person holding this identifier objected,
  under any of their identifiers? Synchronous, from an in-memory snapshot that a
  background task refreshes from the store every ``refresh_interval`` (0.25 s), so
  an objection made through any replica or the CLI holds everywhere within a
  second, without a restart or a policy reload. The policy file's legacy
  ``objections:`` list counts too, expanded to every linked identifier.
* ``learn(groups)``: an answer showed each group of pseudonyms to be one person.
  The links are queued and written in the background; the return value says which
  groups belong to an objected person, whose answer must then be neutralized
  (the new identifier is marked objected here at once, and linked in the store).
* ``is_issued`` / ``neutral_id``: **id parity**. Neutral ids (the kloutId the
  identity step gives a missing or objected person) are shaped like the
  upstream's real ids (lengths learned from real ids seen, or declared by the
  adapter), kept in the store so every replica recognises them, one per person
  whichever identifier was asked, and never forwarded. Every id about to be
  forwarded is first claimed as real in the store, so an id one replica sent to
  the vendor can never be issued later by another, and an issued id that
  collides with a real one the gateway never saw answers neutral, never a
  stranger's score.

What cannot be known: an identifier the gateway never saw linked and that staff
did not give. It is forwarded like anyone else's until an answer links it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

from gateway.audit.graph import IdentityStore, Issued
from gateway.audit.pseudonym import Pseudonymizer
from gateway.audit.store import StoreError
from gateway.errors import AuditUnavailable
from gateway.mac import KeyedMac
from gateway.upstreams.base import Adapter, RouteMatch, Subject, UpstreamAnswer

log = logging.getLogger(__name__)

#: Lengths of real ids when the gateway has seen none yet: (shortest, longest).
DEFAULT_LENGTHS = (3, 18)
MAX_QUEUED_LINKS = 10_000
KNOWN_IDS = 100_000  # ids whose kind this replica already settled (LRU)


class IdentityGraph:
    """The request path's view of the graph; one per process, shared by requests."""

    def __init__(
        self,
        store: IdentityStore,
        pseudonyms: Pseudonymizer,
        *,
        static_objections: Callable[[], frozenset[str]] = frozenset,
        refresh_interval: float = 0.25,
        lengths_interval: float = 5.0,
    ) -> None:
        self.store = store
        self._pseudonyms = pseudonyms
        self._id_mac = KeyedMac(pseudonyms.derive(b"neutral-identifiers"))
        self._static_objections = static_objections
        self.refresh_interval = refresh_interval
        self._lengths_interval = lengths_interval
        # The snapshot: mutated only on the event loop's thread, between awaits.
        self._rev = -1
        self._person: dict[str, str] = {}
        self._members: dict[str, set[str]] = {}
        self._objected: set[str] = set()
        self._marked: set[str] = set()  # linked to an objected person, not yet stored
        self._static: frozenset[str] = frozenset()
        self._static_expanded: frozenset[str] = frozenset()
        self._issued: dict[str, str] = {}
        self._known: OrderedDict[str, bool] = OrderedDict()  # pseudonym -> issued?
        self._claiming: set[str] = set()  # real ids seen in answers, claim queued
        # Claims waiting for the next batch (one transaction for all that arrive
        # while the previous batch commits): pseudonym -> (namespace, length, future kind).
        self._claims: dict[str, tuple[str, int, asyncio.Future[str]]] = {}
        self._claimer: asyncio.Task[None] | None = None
        self._values: dict[tuple[str, str], str] = {}
        self._lengths: dict[str, dict[int, int]] = {}
        self._lengths_at = 0.0
        # Links to write, and real ids seen in answers to claim: (pseudonyms, namespace, length).
        self._links: asyncio.Queue[tuple[tuple[str, ...], str, int]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh_lock: asyncio.Lock | None = None
        self._unwritten = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the snapshot (or fail: no objection may be missed), then keep it fresh."""
        self._links = asyncio.Queue(MAX_QUEUED_LINKS)
        self._refresh_lock = asyncio.Lock()
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._refresh_forever(), name="identity-refresh"),
            asyncio.create_task(self._write_links_forever(), name="identity-links"),
        ]

    async def close(self) -> None:
        with contextlib.suppress(StoreError, TimeoutError):
            await asyncio.wait_for(self.flush(), 5)
        if self._claimer is not None:
            self._tasks.append(self._claimer)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def flush(self) -> None:
        """Wait until every queued link is in the store and the snapshot has it."""
        if self._links is not None:
            await self._links.join()
        await self.refresh()

    async def refresh(self) -> None:
        """Read what other replicas (and the CLI) wrote since the last refresh."""
        assert self._refresh_lock is not None, "start() first"
        async with self._refresh_lock:
            rev = await asyncio.to_thread(self.store.rev)
            if rev != self._rev:
                changes = await asyncio.to_thread(self.store.changes, self._rev)
                self._apply(changes.rev, changes.members, changes.objections, changes.issued)
            now = time.monotonic()
            if now - self._lengths_at >= self._lengths_interval:
                stored = await asyncio.to_thread(self.store.lengths)
                # Lengths seen here whose claim is still queued are not in the store
                # yet: keep them, or the first neutral ids after a refresh would take
                # the default length, and keep it for good (one id per person).
                for namespace, counts in self._lengths.items():
                    merged = stored.setdefault(namespace, {})
                    for length, count in counts.items():
                        merged[length] = max(merged.get(length, 0), count)
                self._lengths = stored
                self._lengths_at = now

    def _apply(
        self,
        rev: int,
        members: list[tuple[str, str]],
        objections: frozenset[str],
        issued: list[tuple[str, str]],
    ) -> None:
        for pseudonym, person in members:
            old = self._person.get(pseudonym)
            if old is not None and old != person:
                group = self._members.get(old)
                if group is not None:
                    group.discard(pseudonym)
                    if not group:
                        del self._members[old]
            self._person[pseudonym] = person
            self._members.setdefault(person, set()).add(pseudonym)
        objected = set(objections)
        for listed in objections:
            holder = self._person.get(listed)
            if holder is not None:
                objected |= self._members.get(holder, set())
        self._objected = objected
        if self._unwritten == 0:
            self._marked = set()  # every local mark is in the store now
        for pseudonym, owner in issued:
            self._issued[pseudonym] = owner
            self._known.pop(pseudonym, None)
        self._static = frozenset()  # re-expand the policy's list against the new links
        self._rev = rev

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except (StoreError, OSError) as exc:
                if not failing:
                    log.warning("identity graph refresh failed; retrying: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("identity graph refresh works again")
                failing = False

    async def _write_links_forever(self) -> None:
        assert self._links is not None
        while True:
            group, namespace, length = await self._links.get()
            while True:
                try:
                    if namespace:
                        kind = await self._claim(group[0], namespace, length)
                        self._remember(group[0], kind == "issued")
                        self._claiming.discard(group[0])
                    else:
                        await asyncio.to_thread(self.store.link, group)
                    break
                except StoreError as exc:
                    log.warning("could not store a link; retrying in 1 s: %s", exc)
                    await asyncio.sleep(1.0)
            self._unwritten -= 1
            self._links.task_done()

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return self._pseudonyms

    # -- people (hot path) -------------------------------------------------------------

    def person_of(self, pseudonym: str) -> str:
        """The person's id, or the pseudonym itself for an identifier never linked."""
        return self._person.get(pseudonym, pseudonym)

    def members_of(self, pseudonym: str) -> frozenset[str]:
        person = self._person.get(pseudonym)
        if person is None:
            return frozenset((pseudonym,))
        return frozenset(self._members.get(person, {pseudonym}))

    def is_objected(self, pseudonym: str) -> bool:
        """Whether the person holding ``pseudonym`` objected, under any identifier."""
        if pseudonym in self._objected or pseudonym in self._marked:
            return True
        static = self._static_objections()
        if not static:
            return False
        if static is not self._static:
            expanded: set[str] = set(static)
            for listed in static:
                expanded |= self.members_of(listed)
            self._static, self._static_expanded = static, frozenset(expanded)
        return pseudonym in self._static_expanded

    def link(self, pseudonyms: Iterable[str]) -> None:
        """Queue a link: ``pseudonyms`` belong to one person. If any of them is
        objected, all of them are, at once on this replica and in the store soon."""
        group = tuple(sorted(set(pseudonyms)))
        if len(group) < 2:
            return
        if any(self.is_objected(p) for p in group):
            self._marked.update(group)
        if all(self._person.get(p) == self._person.get(group[0]) for p in group) and (
            group[0] in self._person
        ):
            return  # already one person
        self._enqueue(group, "", 0)

    def _enqueue(self, group: tuple[str, ...], namespace: str, length: int) -> None:
        if self._links is None:
            raise RuntimeError("the identity graph is not started")
        try:
            self._links.put_nowait((group, namespace, length))
        except asyncio.QueueFull:
            log.warning("identity write queue full: a link or claim is dropped")
            return
        self._unwritten += 1

    def learn(self, groups: Sequence[Sequence[str]]) -> list[bool]:
        """An answer showed each group to be one person: link them, and say for
        each group whether it belongs to an objected person (neutralize it)."""
        objected = [any(self.is_objected(p) for p in group) for group in groups]
        for group in groups:
            self.link(group)
        return objected

    # -- ids (id parity) ---------------------------------------------------------------

    def is_issued_known(self, pseudonym: str) -> bool | None:
        """``True`` for an id the gateway issued, ``False`` for one known real,
        ``None`` when this replica has not settled it yet (ask :meth:`is_issued`)."""
        if pseudonym in self._issued:
            return True
        known = self._known.get(pseudonym)
        if known is not None:
            self._known.move_to_end(pseudonym)
        return known

    async def is_issued(self, pseudonym: str, namespace: str, length: int) -> bool:
        """Whether an id is the gateway's own; otherwise it is claimed as real in the
        store first, so no replica can issue it afterwards. Call before forwarding."""
        known = self.is_issued_known(pseudonym)
        if known is not None:
            return known
        kind = await self._claim(pseudonym, namespace, length)
        self._remember(pseudonym, kind == "issued")
        if kind != "issued":
            # A real id about to be forwarded shapes the next neutral ids now, not at
            # the next read of the stored lengths (up to ``lengths_interval`` later):
            # a person's first neutral id is theirs for good.
            self._learn_length(namespace, length)
        return kind == "issued"

    async def _claim(self, pseudonym: str, namespace: str, length: int) -> str:
        """``claim_real`` in a batch: ids first seen while a batch commits wait for the
        next one, so a burst of new ids costs one transaction, not one each."""
        waiting = self._claims.get(pseudonym)
        if waiting is None:
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_observed)  # its callers may all have gone away
            waiting = (namespace, length, future)
            self._claims[pseudonym] = waiting
            if self._claimer is None:
                self._claimer = asyncio.create_task(self._claim_batches(), name="id-claims")
        # Shielded: a caller that goes away must not cancel the others' answer.
        return await asyncio.shield(waiting[2])

    async def _claim_batches(self) -> None:
        batch: dict[str, tuple[str, int, asyncio.Future[str]]] = {}
        try:
            while self._claims:
                batch, self._claims = self._claims, {}
                claims = [(p, namespace, length) for p, (namespace, length, _) in batch.items()]
                try:
                    kinds = await asyncio.to_thread(self.store.claim_real_many, claims)
                except StoreError as exc:
                    _settle(batch, error=str(exc))
                    continue
                for p, (_, _, future) in batch.items():
                    if not future.done():
                        future.set_result(kinds[p])
        finally:  # cancelled (closing): nobody waits for ever
            _settle(batch, error="the identity graph is closing")
            _settle(self._claims, error="the identity graph is closing")
            self._claims = {}
            self._claimer = None

    def saw_real(self, pseudonym: str, namespace: str, length: int) -> None:
        """An upstream answer named this id: claim it as real in the store (so it is
        never issued) and learn its length. It stays unsettled on this replica
        until the claim is read back, so no request forwards it on a guess."""
        if pseudonym in self._issued or pseudonym in self._known or pseudonym in self._claiming:
            return
        self._learn_length(namespace, length)
        self._claiming.add(pseudonym)
        self._enqueue((pseudonym,), namespace, length)

    def _learn_length(self, namespace: str, length: int) -> None:
        counts = self._lengths.setdefault(namespace, {})
        counts[length] = counts.get(length, 0) + 1

    def _remember(self, pseudonym: str, issued: bool) -> None:
        self._known[pseudonym] = issued
        self._known.move_to_end(pseudonym)
        while len(self._known) > KNOWN_IDS:
            self._known.popitem(last=False)

    async def neutral_id(
        self, namespace: str, owner: str, default_lengths: tuple[int, int] = DEFAULT_LENGTHS
    ) -> str:
        """The neutral id in ``namespace`` of the person holding pseudonym ``owner``:
        the same for every identifier of that person, on every replica."""
        key = (namespace, self.person_of(owner))
        cached = self._values.get(key)
        if cached is not None:
            return cached
        found = await asyncio.to_thread(self.store.issued_for, namespace, owner)
        if found is not None:
            value = self._value(found.owner, namespace, found.nonce, found.length)
            self._values[key] = value
            return value
        lengths = self._length_weights(namespace, default_lengths)

        def candidate(nonce: int) -> tuple[str, int]:
            length = _pick(lengths, self._mac(b"length", owner, namespace, nonce))
            value = self._value(owner, namespace, nonce, length)
            return self._pseudonyms.pseudonym(namespace, value), length

        issued: Issued = await asyncio.to_thread(self.store.issue, namespace, owner, candidate)
        value = self._value(issued.owner, namespace, issued.nonce, issued.length)
        self._issued[issued.pseudonym] = issued.owner
        self._values[key] = value
        return value

    def _length_weights(
        self, namespace: str, default_lengths: tuple[int, int]
    ) -> list[tuple[int, int]]:
        seen = self._lengths.get(namespace)
        if seen:
            return sorted(seen.items())
        low, high = default_lengths
        return [(n, 1) for n in range(low, high + 1)]

    def _mac(self, label: bytes, owner: str, namespace: str, nonce: int) -> bytes:
        message = b"\x00".join((label, owner.encode(), namespace.encode(), str(nonce).encode()))
        return self._id_mac.digest(message)

    def _value(self, owner: str, namespace: str, nonce: int, length: int) -> str:
        """Uniform digits of the given length, no leading zero: a numeric id's shape.
        Bytes past the largest multiple of 10 (or 9) are skipped, so no digit is
        more likely than another."""
        digits: list[str] = []
        counter = 0
        while len(digits) < length:
            for byte in self._mac(bytes([counter]), owner, namespace, nonce):
                if not digits and byte < 252:
                    digits.append(str(1 + byte % 9))
                elif digits and byte < 250:
                    digits.append(str(byte % 10))
                if len(digits) == length:
                    break
            counter += 1
        return "".join(digits)


def _pick(weights: list[tuple[int, int]], mac: bytes) -> int:
    """A length drawn with the given weights, from MAC bytes (same on every replica)."""
    total = sum(w for _, w in weights)
    point = int.from_bytes(mac[:8], "big") % total
    for length, weight in weights:
        if point < weight:
            return length
        point -= weight
    return weights[-1][0]


def _settle(claims: Mapping[str, tuple[str, int, asyncio.Future[str]]], *, error: str) -> None:
    for _, _, future in claims.values():
        if not future.done():
            future.set_exception(StoreError(error))


def _observed(future: asyncio.Future[str]) -> None:
    if not future.cancelled():
        future.exception()


# -- the request path's questions, one call each ---------------------------------------


async def issued_among(
    graph: IdentityGraph, adapter: Adapter, pseudonyms: Mapping[Subject, str]
) -> set[Subject]:
    """The subjects that are ids the gateway issued (answer them locally). Every
    other id in an issuing id space is claimed as real before it is forwarded."""
    lengths = adapter.id_lengths
    try:
        return {
            s
            for s, p in pseudonyms.items()
            if s.namespace in lengths and await graph.is_issued(p, s.namespace, len(s.identifier))
        }
    except StoreError as exc:  # fail closed: an unsettled id is neither forwarded nor answered
        raise AuditUnavailable("the identity graph cannot be read; no score is served") from exc


async def neutral_ids(
    graph: IdentityGraph, adapter: Adapter, template: str, subjects: Iterable[Subject]
) -> dict[tuple[Subject, str], str]:
    """The issued ids a neutral answer on ``template`` carries for ``subjects``."""
    out: dict[tuple[Subject, str], str] = {}
    for namespace in adapter.neutral_id_namespaces(template):
        default = adapter.id_lengths.get(namespace, DEFAULT_LENGTHS)
        for s in subjects:
            owner = graph.pseudonymizer.pseudonym(s.namespace, s.identifier)
            try:
                out[(s, namespace)] = await graph.neutral_id(namespace, owner, default)
            except StoreError as exc:
                raise AuditUnavailable("the identity graph cannot issue an id") from exc
    return out


async def objected_in_answer(
    graph: IdentityGraph, adapter: Adapter, route: RouteMatch, answer: UpstreamAnswer
) -> set[Subject]:
    """Learn the links a found answer shows; return the asked subjects whose person
    it reveals to be objected (the answer about them must be neutralized). Those
    links are stored before the caller is answered, so the neutral id the answer
    carries is the person's one neutral id."""
    groups = adapter.identities(route, answer)
    if not groups:
        return set()
    pseudonym = graph.pseudonymizer.pseudonym
    for group in groups:
        for s in group:
            if s.namespace in adapter.id_lengths and s not in route.subjects:
                graph.saw_real(pseudonym(s.namespace, s.identifier), s.namespace, len(s.identifier))
    pseudonym_groups = [[pseudonym(s.namespace, s.identifier) for s in g] for g in groups]
    flags = graph.learn(pseudonym_groups)
    if any(flags):
        try:
            for linked, flag in zip(pseudonym_groups, flags, strict=True):
                if flag:
                    await asyncio.to_thread(graph.store.link, linked)
            await graph.refresh()
        except StoreError as exc:
            raise AuditUnavailable("the identity graph cannot take a link") from exc
    asked = set(route.subjects)
    return {
        s for group, flag in zip(groups, flags, strict=True) if flag for s in group if s in asked
    }
