"""The identity graph's tables: pseudonyms linked into people, objections, issued ids.

They live in the audit store's database (SQLite file or PostgreSQL), so every
replica reads and writes one graph. Nothing here is an identifier in clear: rows
hold keyed pseudonyms (:mod:`gateway.audit.pseudonym`), random person ids and
namespace names.

Tables (all prefixed ``identity_``):

* ``identity_member``: ``pseudonym`` (primary key) → ``person``. Two pseudonyms
  with the same ``person`` were shown to belong to one person (an upstream answer
  said so, or staff did). Linking two people re-points every member of the one
  with the larger id to the smaller (union by rewrite: people are a handful of
  identifiers, so a merge touches a handful of rows).
* ``identity_objection``: the pseudonyms staff named in an objection, with when
  and by whom. A person is objected when any of its members is listed, so an
  objection follows every identifier linked later, and a merge of two people
  carries it over without touching this table.
* ``identity_id``: identifiers whose kind the gateway settled, keyed by their
  pseudonym: ``issued`` (a neutral id the gateway made, with the pseudonym it
  stands for and the ``nonce`` and ``length`` it was derived from, never the
  value) or ``real`` (forwarded to the upstream, or seen in its answers; the
  ``length`` teaches the shape of the upstream's ids). The primary key makes
  the first claim win: an id that one replica forwarded can never be issued
  afterwards by another, and an issued id is never forwarded.
* ``identity_length``: ``(namespace, length)`` → ``count`` of the ``real`` ids,
  kept in the transaction that claims them (an id counts once, whoever claims
  it first). Every worker reads the shape of the upstream's ids from these few
  rows; counting ``identity_id`` itself scanned every id ever seen (1.0 s of CPU
  at a million ids, every 5 s in every worker). A store made before this table
  existed is counted once when a gateway first opens it.
* ``identity_head``: one row (``id = 1``) whose ``rev`` counts graph writes.
  Every write transaction locks it first (``FOR UPDATE`` on PostgreSQL, the
  write lock on SQLite), bumps it and stamps the rows it touched, so a replica
  refreshes by reading only rows newer than the ``rev`` it last saw.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Table,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Field, SQLModel

from gateway.audit.store import META, SCHEMA_LOCK, StoreError

KEY_CHECK = "pseudonym_key_check"


class MemberRow(SQLModel, table=True):
    __tablename__ = "identity_member"

    pseudonym: str = Field(primary_key=True)
    person: str = Field(index=True)
    rev: int = Field(sa_type=BigInteger, index=True)


class ObjectionRow(SQLModel, table=True):
    __tablename__ = "identity_objection"

    pseudonym: str = Field(primary_key=True)
    time: str
    actor: str


class IdRow(SQLModel, table=True):
    __tablename__ = "identity_id"

    pseudonym: str = Field(primary_key=True)
    namespace: str
    kind: str  # real | issued
    length: int
    owner: str | None = None  # issued: the pseudonym the id stands for
    nonce: int | None = None  # issued: derivation input of the value
    rev: int = Field(sa_type=BigInteger, index=True)


class IdLengthRow(SQLModel, table=True):
    __tablename__ = "identity_length"

    namespace: str = Field(primary_key=True)
    length: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    count: int = Field(sa_type=BigInteger)


class GraphHeadRow(SQLModel, table=True):
    __tablename__ = "identity_head"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    rev: int = Field(sa_type=BigInteger)


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]  # set by SQLModel for table=True
    assert isinstance(table, Table)
    return table


MEMBERS = _table(MemberRow)
OBJECTIONS = _table(ObjectionRow)
IDS = _table(IdRow)
LENGTHS = _table(IdLengthRow)
GRAPH_HEAD = _table(GraphHeadRow)
GRAPH_TABLES = [MEMBERS, OBJECTIONS, IDS, LENGTHS, GRAPH_HEAD]


@dataclass(frozen=True, slots=True)
class Linked:
    """What a link or an objection did: the person, how many identifiers it now
    has, how many of the given ones were new to the graph, and whether it is objected."""

    person: str
    identifiers: int
    new: int
    merged: int
    objected: bool


@dataclass(frozen=True, slots=True)
class ObjectedPerson:
    """One row of ``gateway objections list``: pseudonyms only."""

    person: str
    since: str
    actor: str
    given: tuple[str, ...]  # the pseudonyms staff named
    identifiers: int  # every identifier linked to the person


@dataclass(frozen=True, slots=True)
class Issued:
    pseudonym: str  # of the issued id
    owner: str
    nonce: int
    length: int


@dataclass(frozen=True, slots=True)
class GraphChanges:
    """Rows newer than a ``rev``, for a replica's snapshot."""

    rev: int
    members: list[tuple[str, str]]
    objections: frozenset[str]
    issued: list[tuple[str, str]]  # (pseudonym of the id, owner)


Candidate = Callable[[int], tuple[str, int]]  # nonce -> (pseudonym of the value, length)


class PseudonymKeyMismatch(Exception):
    """The store was written under another pseudonym key."""


class IdentityStore:
    """Reads and writes of the graph; thread-safe through the engine's pool."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        count = _upsert(self._postgres, LENGTHS)
        self._count_lengths = count.on_conflict_do_update(
            index_elements=[LENGTHS.c.namespace, LENGTHS.c.length],
            set_={"count": LENGTHS.c.count + count.excluded.count},
        )

    def create(self) -> None:
        try:
            with self._locked_connection() as conn, conn.begin():
                if self._postgres:  # replicas starting together take turns (see store.py)
                    conn.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
                SQLModel.metadata.create_all(conn, tables=GRAPH_TABLES)
                if conn.execute(select(GRAPH_HEAD.c.rev)).first() is None:
                    with contextlib.suppress(IntegrityError), conn.begin_nested():
                        conn.execute(insert(GRAPH_HEAD), {"id": 1, "rev": 0})
                if conn.execute(select(LENGTHS.c.count).limit(1)).first() is None:
                    # Real ids claimed before the counts were kept: count them once. A
                    # claim committing meanwhile counted its own ids; those rows stand.
                    counted = (
                        select(IDS.c.namespace, IDS.c.length, func.count())
                        .where(IDS.c.kind == "real")
                        .group_by(IDS.c.namespace, IDS.c.length)
                    )
                    conn.execute(
                        _upsert(self._postgres, LENGTHS)
                        .from_select(["namespace", "length", "count"], counted)
                        .on_conflict_do_nothing()
                    )
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot prepare the identity graph: {exc.__class__.__name__}"
            ) from exc

    def bind_key(self, check_value: str) -> None:
        """Record the pseudonym key's check value, or refuse another key's store.

        A log whose pseudonyms were made under another key would split every
        person in two: subject access would miss records and objections would
        match on some replicas only. So the first gateway to use a store records
        the check value, and every later one must match it."""
        try:
            with self._locked_connection() as conn, conn.begin():
                stored = conn.execute(
                    select(META.c.value).where(META.c.key == KEY_CHECK)
                ).scalar_one_or_none()
                if stored is None:
                    with contextlib.suppress(IntegrityError), conn.begin_nested():
                        conn.execute(insert(META), {"key": KEY_CHECK, "value": check_value})
                    stored = conn.execute(
                        select(META.c.value).where(META.c.key == KEY_CHECK)
                    ).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot read the store's key check: {exc.__class__.__name__}"
            ) from exc
        if stored != check_value:
            raise PseudonymKeyMismatch(
                f"the audit store was written under another pseudonym key (its check value "
                f"{stored[-12:]}, this gateway's {check_value[-12:]}); give every replica "
                f"the same GATEWAY_PSEUDONYM_SECRET"
            )

    @contextlib.contextmanager
    def _locked_connection(self) -> Iterator[Connection]:
        # audit_writer: on SQLite the store's engine begins with BEGIN IMMEDIATE (the
        # database write lock), so graph writes are serialised across processes.
        with self.engine.connect().execution_options(audit_writer=True) as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[tuple[Connection, int]]:
        """A transaction holding the graph lock, with the ``rev`` its rows carry."""
        try:
            with self._locked_connection() as conn, conn.begin():
                head = select(GRAPH_HEAD.c.rev).where(GRAPH_HEAD.c.id == 1)
                if self._postgres:
                    head = head.with_for_update()
                rev = int(conn.execute(head).scalar_one()) + 1
                conn.execute(update(GRAPH_HEAD).where(GRAPH_HEAD.c.id == 1).values(rev=rev))
                yield conn, rev
        except SQLAlchemyError as exc:
            raise StoreError(
                f"the identity graph is unavailable: {exc.__class__.__name__}"
            ) from exc

    # -- people ----------------------------------------------------------------------

    def link(self, pseudonyms: Sequence[str]) -> Linked:
        """Record that ``pseudonyms`` belong to one person (merging people if needed)."""
        with self._write() as (conn, rev):
            return self._link(conn, rev, pseudonyms)

    def _link(self, conn: Connection, rev: int, pseudonyms: Sequence[str]) -> Linked:
        wanted = sorted(set(pseudonyms))
        known = dict(
            conn.execute(
                select(MEMBERS.c.pseudonym, MEMBERS.c.person).where(MEMBERS.c.pseudonym.in_(wanted))
            ).all()
        )
        persons = set(known.values())
        person = min(persons) if persons else uuid.uuid4().hex
        others = sorted(persons - {person})
        if others:
            conn.execute(
                update(MEMBERS).where(MEMBERS.c.person.in_(others)).values(person=person, rev=rev)
            )
        new = [p for p in wanted if p not in known]
        if new:
            conn.execute(
                insert(MEMBERS), [{"pseudonym": p, "person": person, "rev": rev} for p in new]
            )
        members = self._members(conn, person)
        objected = bool(
            conn.execute(
                select(func.count())
                .select_from(OBJECTIONS)
                .where(OBJECTIONS.c.pseudonym.in_(members))
            ).scalar_one()
        )
        return Linked(person, len(members), len(new), len(others), objected)

    def _members(self, conn: Connection, person: str) -> list[str]:
        return list(
            conn.execute(select(MEMBERS.c.pseudonym).where(MEMBERS.c.person == person)).scalars()
        )

    def members_of(self, pseudonym: str) -> list[str]:
        """Every pseudonym linked to ``pseudonym`` (itself included)."""
        with self.engine.connect() as conn:
            person = conn.execute(
                select(MEMBERS.c.person).where(MEMBERS.c.pseudonym == pseudonym)
            ).scalar_one_or_none()
            return [pseudonym] if person is None else self._members(conn, person)

    def expand(self, pseudonyms: Sequence[str]) -> list[str]:
        """``pseudonyms`` and every pseudonym linked to any of them (subject access)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(MEMBERS.name):
                return list(pseudonyms)  # a log no gateway of this version wrote to yet
            persons = list(
                conn.execute(
                    select(MEMBERS.c.person).where(MEMBERS.c.pseudonym.in_(list(pseudonyms)))
                ).scalars()
            )
            linked: list[str] = []
            if persons:
                linked = list(
                    conn.execute(
                        select(MEMBERS.c.pseudonym).where(MEMBERS.c.person.in_(persons))
                    ).scalars()
                )
            return list(dict.fromkeys([*pseudonyms, *linked]))

    # -- objections ------------------------------------------------------------------

    def object(self, pseudonyms: Sequence[str], *, time: str, actor: str) -> Linked:
        """Link ``pseudonyms`` into one person and record the objection."""
        with self._write() as (conn, rev):
            linked = self._link(conn, rev, pseudonyms)
            listed = set(
                conn.execute(
                    select(OBJECTIONS.c.pseudonym).where(OBJECTIONS.c.pseudonym.in_(pseudonyms))
                ).scalars()
            )
            rows = [
                {"pseudonym": p, "time": time, "actor": actor}
                for p in sorted(set(pseudonyms) - listed)
            ]
            if rows:
                conn.execute(insert(OBJECTIONS), rows)
            return Linked(linked.person, linked.identifiers, linked.new, linked.merged, True)

    def withdraw(self, pseudonyms: Sequence[str]) -> tuple[int, list[str]]:
        """Remove the objection of every person holding one of ``pseudonyms``.

        Returns how many people it covered and the pseudonyms their objections
        had named (for the audit record). Links stay: they are facts, not consent."""
        with self._write() as (conn, _rev):
            persons = set(
                conn.execute(
                    select(MEMBERS.c.person).where(MEMBERS.c.pseudonym.in_(list(pseudonyms)))
                ).scalars()
            )
            members = set(pseudonyms)
            for person in persons:
                members.update(self._members(conn, person))
            named = sorted(
                conn.execute(
                    select(OBJECTIONS.c.pseudonym).where(
                        OBJECTIONS.c.pseudonym.in_(sorted(members))
                    )
                ).scalars()
            )
            if named:
                conn.execute(delete(OBJECTIONS).where(OBJECTIONS.c.pseudonym.in_(named)))
            people = set(
                conn.execute(
                    select(MEMBERS.c.person).where(MEMBERS.c.pseudonym.in_(named))
                ).scalars()
            )
            return len(people), named

    def objections(self) -> list[ObjectedPerson]:
        """Every objected person, oldest objection first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    OBJECTIONS.c.pseudonym, OBJECTIONS.c.time, OBJECTIONS.c.actor, MEMBERS.c.person
                )
                .select_from(
                    OBJECTIONS.outerjoin(MEMBERS, MEMBERS.c.pseudonym == OBJECTIONS.c.pseudonym)
                )
                .order_by(OBJECTIONS.c.time, OBJECTIONS.c.pseudonym)
            ).all()
            people: dict[str, list[Any]] = {}
            for pseudonym, time, actor, person in rows:
                people.setdefault(person or pseudonym, []).append((pseudonym, time, actor))
            sizes: dict[str, int] = dict(
                conn.execute(
                    select(MEMBERS.c.person, func.count())
                    .where(MEMBERS.c.person.in_(list(people)))
                    .group_by(MEMBERS.c.person)
                ).all()
            )
        return [
            ObjectedPerson(
                person=person,
                since=entries[0][1],
                actor=entries[0][2],
                given=tuple(e[0] for e in entries),
                identifiers=int(sizes.get(person, len(entries))),
            )
            for person, entries in people.items()
        ]

    # -- identifiers the gateway issued or forwarded -----------------------------------

    def claim_real(self, pseudonym: str, namespace: str, length: int) -> Literal["real", "issued"]:
        """Settle an id about to be forwarded: ``issued`` if the gateway issued it,
        else record it as ``real`` (so it is never issued afterwards)."""
        return self.claim_real_many([(pseudonym, namespace, length)])[pseudonym]

    def claim_real_many(
        self, claims: Sequence[tuple[str, str, int]]
    ) -> dict[str, Literal["real", "issued"]]:
        """:meth:`claim_real` for ``(pseudonym, namespace, length)`` claims at once: one
        read, and one transaction (one commit, one fsync) for the ids not yet settled.

        The read comes first, without the write lock: an id's row, once there, never
        changes, and with several workers or replicas most ids were settled by
        another one (on SQLite the lock is the audit log's own write lock).
        """
        pseudonyms = list(dict.fromkeys(p for p, _, _ in claims))
        try:
            with self.engine.connect() as conn:
                kinds = self._kinds(conn, pseudonyms)
            new = {p: (ns, n) for p, ns, n in claims if p not in kinds}
            if new:
                with self._locked_connection() as conn, conn.begin():
                    settled, shapes = self._insert_real(conn, new)
                    if shapes:  # only the ids this claim inserted count
                        conn.execute(
                            self._count_lengths,
                            [
                                {"namespace": ns, "length": n, "count": c}
                                for (ns, n), c in shapes.items()
                            ],
                        )
                    kinds.update(settled)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"the identity graph is unavailable: {exc.__class__.__name__}"
            ) from exc
        return {p: "issued" if kinds[p] == "issued" else "real" for p in pseudonyms}

    def _insert_real(
        self, conn: Connection, new: dict[str, tuple[str, int]]
    ) -> tuple[dict[str, str], Counter[tuple[str, int]]]:
        """Insert ``new`` ids as real, skipping any settled meanwhile. Return the kind
        of every id in ``new`` now, and the ``(namespace, length)`` of each id this
        call inserted."""
        if self._postgres:
            # Another replica may claim or issue one meanwhile (PostgreSQL has no
            # database lock here): its row stands, and is read back below.
            # RETURNING names the rows this statement inserted; one statement over
            # arrays (SQLAlchemy's executemany with RETURNING cost 35 µs per id).
            claimed = conn.exec_driver_sql(
                f"INSERT INTO {IDS.name} (pseudonym, namespace, kind, length, rev) "  # noqa: S608  # our table's name
                "SELECT p, ns, 'real', n, 0 FROM unnest(%s::varchar[], %s::varchar[], %s::int[])"
                " AS t(p, ns, n) ON CONFLICT DO NOTHING RETURNING pseudonym",
                (list(new), [ns for ns, _ in new.values()], [n for _, n in new.values()]),
            ).scalars()
            shapes = Counter(new[p] for p in claimed)
            return self._kinds(conn, list(new)), shapes
        # SQLite: this transaction holds the database's write lock, so the ids not
        # settled now are exactly the ones the insert adds, and no read-back is
        # needed (RETURNING through SQLAlchemy's executemany cost 45 µs per id).
        settled = self._kinds(conn, list(new))
        fresh = {p: shape for p, shape in new.items() if p not in settled}
        if fresh:
            rows = [
                {"pseudonym": p, "namespace": ns, "kind": "real", "length": n, "rev": 0}
                for p, (ns, n) in fresh.items()
            ]
            conn.execute(_upsert(False, IDS).on_conflict_do_nothing(), rows)
        return settled | dict.fromkeys(fresh, "real"), Counter(fresh.values())

    @staticmethod
    def _kinds(conn: Connection, pseudonyms: list[str]) -> dict[str, str]:
        kinds: dict[str, str] = {}
        for start in range(0, len(pseudonyms), 500):  # bound the statement's parameters
            chunk = pseudonyms[start : start + 500]
            query = select(IDS.c.pseudonym, IDS.c.kind).where(IDS.c.pseudonym.in_(chunk))
            kinds.update((p, k) for p, k in conn.execute(query))
        return kinds

    def issued_for(self, namespace: str, owner: str) -> Issued | None:
        """The neutral id already issued to ``owner``'s person in ``namespace``, if any
        (a read: the common case of :meth:`issue` without taking the graph lock)."""
        try:
            with self.engine.connect() as conn:
                person = conn.execute(
                    select(MEMBERS.c.person).where(MEMBERS.c.pseudonym == owner)
                ).scalar_one_or_none()
                members = [owner] if person is None else self._members(conn, person)
                return self._issued_among(conn, namespace, members)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"the identity graph is unavailable: {exc.__class__.__name__}"
            ) from exc

    def _issued_among(self, conn: Connection, namespace: str, members: list[str]) -> Issued | None:
        row = conn.execute(
            select(IDS.c.pseudonym, IDS.c.owner, IDS.c.nonce, IDS.c.length)
            .where(IDS.c.kind == "issued", IDS.c.namespace == namespace)
            .where(IDS.c.owner.in_(members))
            .order_by(IDS.c.rev, IDS.c.pseudonym)
            .limit(1)
        ).first()
        if row is None:
            return None
        return Issued(row.pseudonym, row.owner, int(row.nonce), int(row.length))

    def issue(
        self, namespace: str, owner: str, candidate: Candidate, *, attempts: int = 64
    ) -> Issued:
        """The neutral id of ``owner``'s person in ``namespace``: the one already
        issued to any of its identifiers, or a new one that collides with no id
        forwarded, seen or issued before. ``candidate(nonce)`` names a value by
        its pseudonym and length; the value itself is never stored."""
        with self._write() as (conn, rev):
            linked = self._link(conn, rev, [owner])
            existing = self._issued_among(conn, namespace, self._members(conn, linked.person))
            if existing is not None:
                return existing
            for nonce in range(attempts):
                pseudonym, length = candidate(nonce)
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(IDS),
                            {"pseudonym": pseudonym, "namespace": namespace, "kind": "issued",
                             "length": length, "owner": owner, "nonce": nonce, "rev": rev},
                        )  # fmt: skip
                except IntegrityError:
                    continue  # taken: a real id, or one issued to someone else
                # The id stands for this person: objections and subject access follow it.
                self._link(conn, rev, [owner, pseudonym])
                return Issued(pseudonym, owner, nonce, length)
        raise StoreError(f"no free neutral id in namespace {namespace!r} after {attempts} tries")

    def lengths(self) -> dict[str, dict[int, int]]:
        """How many real ids of each length the gateway saw, per namespace."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(LENGTHS.c.namespace, LENGTHS.c.length, LENGTHS.c.count)
            ).all()
        out: dict[str, dict[int, int]] = {}
        for namespace, length, count in rows:
            out.setdefault(namespace, {})[int(length)] = int(count)
        return out

    # -- refresh ---------------------------------------------------------------------

    def rev(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(GRAPH_HEAD.c.rev)).scalar_one())

    def changes(self, since: int) -> GraphChanges:
        """Rows written after ``since`` (members, issued ids) and every objection."""
        with self.engine.connect() as conn, conn.begin():
            rev = int(conn.execute(select(GRAPH_HEAD.c.rev)).scalar_one())
            members = [
                (str(p), str(person))
                for p, person in conn.execute(
                    select(MEMBERS.c.pseudonym, MEMBERS.c.person).where(MEMBERS.c.rev > since)
                )
            ]
            objections = frozenset(conn.execute(select(OBJECTIONS.c.pseudonym)).scalars())
            issued = [
                (str(p), str(owner))
                for p, owner in conn.execute(
                    select(IDS.c.pseudonym, IDS.c.owner).where(
                        IDS.c.kind == "issued", IDS.c.rev > since
                    )
                )
            ]
        return GraphChanges(rev, members, objections, issued)


def _upsert(postgres: bool, table: Table) -> Any:
    """An ``INSERT`` into ``table`` with the dialect's ``ON CONFLICT`` clauses."""
    if postgres:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
