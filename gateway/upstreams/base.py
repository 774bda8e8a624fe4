"""The contract every upstream adapter fulfils.

An adapter is compiled once from the policy's upstream entry. For each request it

1. ``match``es the method and path to a known route template and extracts the
   subject identifier(s) (path segment, query parameter, comma list);
2. ``classify``s the upstream's answer per subject: ``found``, ``missing``,
   ``pending``, ``throttled`` or ``error``;
3. writes a ``neutral_answer`` in the API's own success shape, so a missing,
   pending or objected person is indistinguishable from any other person.

Adapters are pure: no I/O, no clock. The proxy does the calling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import msgspec

from gateway.policies.model import Outcome


class InvalidSubject(ValueError):
    """An identifier outside the API's charset: refused, never forwarded."""


class Subject(msgspec.Struct, frozen=True):
    """One identifier of a person, in the namespace it belongs to.

    ``namespace`` separates identifier spaces (a Twitter id ``1001`` is not a
    kloutId ``1001``); the audit pseudonym and the objection list key on both.
    """

    namespace: str
    identifier: str


class RouteMatch(msgspec.Struct, frozen=True, kw_only=True):
    """A request matched to one of the adapter's routes."""

    template: str
    subjects: tuple[Subject, ...]
    # Subjects the gateway can answer without the upstream (e.g. a neutral id it
    # issued earlier in a two-step flow).
    local_subjects: tuple[Subject, ...] = ()
    # The query parameters this route declares. Any other is refused
    # (``request.unknown_parameter``) and never forwarded: an undeclared parameter
    # could carry an identifier past the objection check.
    params: frozenset[str] = frozenset()


class Embedded(msgspec.Struct, frozen=True, kw_only=True):
    """A person inside an answer who was not (necessarily) the one asked about:
    an influencer, an soi entry, a batch entry. ``subjects`` are every identifier
    the answer shows for them; ``place`` is the list holding the entry and the
    entry's index in it, so it can be left out or neutralized."""

    subjects: tuple[Subject, ...]
    place: tuple[str | int, ...]
    index: int


class UpstreamAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP answer as the adapter sees it: status, headers we keep, body."""

    status: int
    content_type: str
    body: bytes
    retry_after: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome for each subject of the request, and for the whole answer."""

    outcome: Outcome
    per_subject: dict[Subject, Outcome] = {}


class Adapter(Protocol):
    """What the proxy needs from an adapter."""

    name: str
    #: Statuses and content type of the API's normal success answers.
    success_content_type: str
    #: Id spaces where neutral answers carry ids the gateway issues, with the
    #: (shortest, longest) length of real ids before any has been seen.
    id_lengths: Mapping[str, tuple[int, int]]

    def match(self, method: str, path: str, query: list[tuple[str, str]]) -> RouteMatch | None:
        """Return the route and subjects, or ``None`` for a route this API lacks."""

    def subjects_for(self, identifier: str) -> tuple[Subject, ...]:
        """Every subject ``identifier`` may be in this API (for subject access)."""

    def without_subjects(
        self, route: RouteMatch, path: str, query: list[tuple[str, str]], drop: set[Subject]
    ) -> tuple[str, list[tuple[str, str]]] | None:
        """The request with ``drop`` removed, or ``None`` if nothing is left to ask."""

    def classify(self, route: RouteMatch, answer: UpstreamAnswer) -> Classification:
        """Classify an upstream answer per subject."""

    def neutral_answer(
        self,
        route: RouteMatch,
        answer: UpstreamAnswer | None,
        neutral: set[Subject],
        score: float,
        ids: Mapping[tuple[Subject, str], str] | None = None,
    ) -> UpstreamAnswer:
        """An answer in the API's success shape with ``score`` for each subject in
        ``neutral``, merged into ``answer`` where it holds other subjects' data.
        ``ids`` are the neutral ids issued for them, by (subject, namespace)."""

    def neutral_id_namespaces(self, template: str) -> tuple[str, ...]:
        """Id spaces of the ids a neutral answer on ``template`` carries per subject."""

    def identities(self, route: RouteMatch, answer: UpstreamAnswer) -> list[tuple[Subject, ...]]:
        """Groups of identifiers a found answer shows to belong to one person."""

    def people(self, route: RouteMatch, answer: UpstreamAnswer) -> list[Embedded]:
        """Every person inside ``answer``, where the route declares people appear."""

    def withhold(
        self,
        route: RouteMatch,
        answer: UpstreamAnswer,
        people: list[Embedded],
        neutral_score: float | None,
    ) -> UpstreamAnswer:
        """``answer`` without ``people``: left out with counts kept consistent
        (``neutral_score`` ``None``), or neutralized in place with that score."""

    def transform(
        self, route: RouteMatch, answer: UpstreamAnswer, redact: tuple[str, ...], coarsen: bool
    ) -> UpstreamAnswer:
        """Apply ``redact`` (dotted field paths) and ``coarsen`` (score to bucket)."""

    def canonical(self, answer: UpstreamAnswer) -> UpstreamAnswer:
        """Re-encode a success answer exactly as neutral answers are encoded, so
        formatting never tells a real answer from a neutral one."""


def bucket_of(score: float) -> str:
    """Klout's decile bucket: ``"10-19"`` ... ``"90-100"`` (and ``"1-9"`` below 10)."""
    if score >= 90:
        return "90-100"
    if score < 10:
        return "1-9"
    low = int(score // 10) * 10
    return f"{low}-{low + 9}"
