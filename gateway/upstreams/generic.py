"""An adapter configured entirely from YAML, for APIs without a dedicated one.

Example (People Data Labs-style enrichment, reference/upstream-apis.md §3.1)::

    generic:
      subject: query:profile            # or path:2 (0-based segment after the prefix)
      score_path: likelihood
      missing_status: [404]
      throttled_status: [429]
      neutral_body: '{"status": 200, "likelihood": {score}, "data": {}}'

Kred's ``data: []`` for an unknown person is ``missing_path: data``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.policies.model import GenericAdapter as GenericConfig
from gateway.policies.model import Outcome
from gateway.upstreams.base import (
    Classification,
    Embedded,
    InvalidSubject,
    RouteMatch,
    Subject,
    UpstreamAnswer,
)
from gateway.upstreams.transform import get_path
from gateway.upstreams.transform import redact as redact_path

# Identifiers of enrichment APIs are e-mail addresses, profile URLs, handles:
# printable ASCII without separators that could change the request's meaning.
IDENTIFIER = re.compile(r"[A-Za-z0-9._@+:/~-]{1,256}")


class GenericAdapter:
    def __init__(self, name: str, config: GenericConfig) -> None:
        self.name = name
        self.config = config
        self.success_content_type = config.neutral_content_type
        self.id_lengths: Mapping[str, tuple[int, int]] = {}
        kind, _, where = config.subject.partition(":")
        if kind not in ("query", "path") or not where:
            raise ValueError(f"subject must be query:NAME or path:INDEX, got {config.subject!r}")
        if kind == "path" and not where.isdigit():
            raise ValueError(f"subject path index must be a number, got {where!r}")
        self._kind = kind
        self._where = where
        self._namespace = f"{name}:{config.subject}"
        self._params = frozenset(config.query_params) | (
            {where} if kind == "query" else frozenset()
        )

    def match(self, method: str, path: str, query: list[tuple[str, str]]) -> RouteMatch | None:
        if method not in ("GET", "POST"):
            return None
        if self._kind == "query":
            values = [v for k, v in query if k == self._where]
            if len(values) != 1:
                raise InvalidSubject(f"this route takes exactly one {self._where}= parameter")
            subjects = self._subjects(values[0])
            return RouteMatch(template=path, subjects=subjects, params=self._params)
        segments = path.split("/")[1:]
        index = int(self._where)
        if index >= len(segments):
            return None
        subjects = self._subjects(segments[index])
        template_segments = list(segments)
        template_segments[index] = "{subject}"
        return RouteMatch(
            template="/" + "/".join(template_segments), subjects=subjects, params=self._params
        )

    def _subjects(self, raw: str) -> tuple[Subject, ...]:
        parts = raw.split(self.config.subject_separator) if self.config.subject_separator else [raw]
        if any(not IDENTIFIER.fullmatch(p) for p in parts):
            raise InvalidSubject("the subject identifier has characters this API does not use")
        return tuple(Subject(self._namespace, p) for p in parts)

    def subjects_for(self, identifier: str) -> tuple[Subject, ...]:
        return (Subject(self._namespace, identifier),)

    def without_subjects(
        self, route: RouteMatch, path: str, query: list[tuple[str, str]], drop: set[Subject]
    ) -> tuple[str, list[tuple[str, str]]] | None:
        keep = [s.identifier for s in route.subjects if s not in drop]
        if not keep:
            return None
        if self._kind == "query" and self.config.subject_separator:
            joined = self.config.subject_separator.join(keep)
            return path, [(k, joined if k == self._where else v) for k, v in query]
        return path, query

    def classify(self, route: RouteMatch, answer: UpstreamAnswer) -> Classification:
        c = self.config
        outcome: Outcome
        header = c.throttled_header.lower() if c.throttled_header else None
        if answer.status in c.throttled_status or (
            header is not None and any(k == header for k, _ in answer.headers)
        ):
            outcome = "throttled"
        elif answer.status in c.pending_status:
            outcome = "pending"
        elif answer.status in c.missing_status:
            outcome = "missing"
        elif 200 <= answer.status < 300:
            outcome = self._classify_body(answer.body)
        else:
            outcome = "error"
        per: dict[Subject, Outcome] = {s: outcome for s in route.subjects}
        if outcome == "found" and c.people is not None and len(route.subjects) > 1:
            # A batch: each person asked is found only if the answer has their entry.
            shown = {_key(s.identifier) for s in self._entry_subjects(answer)}
            per = {s: "found" if _key(s.identifier) in shown else "missing" for s in per}
        return Classification(outcome=outcome, per_subject=per)

    def _classify_body(self, body: bytes) -> Outcome:
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return "error"
        c = self.config
        if c.missing_body is not None and doc == msgspec.json.decode(c.missing_body):
            return "missing"
        if c.missing_path is not None and not get_path(doc, c.missing_path):
            return "missing"
        score = get_path(doc, c.score_path)
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            return "error"
        return "found"

    def neutral_answer(
        self,
        route: RouteMatch,
        answer: UpstreamAnswer | None,
        neutral: set[Subject],
        score: float,
        ids: Mapping[tuple[Subject, str], str] | None = None,
    ) -> UpstreamAnswer:
        c = self.config
        value = self._score(score)
        frame: Any = None
        if answer is not None and 200 <= answer.status < 300:
            frame = _decode(answer.body)
        if c.people is None or not isinstance(get_path(frame, c.people.list), list):
            body = c.neutral_body.replace("{score}", msgspec.json.encode(value).decode())
            subject = ",".join(s.identifier for s in route.subjects)
            body = body.replace("{subject}", msgspec.json.encode(subject).decode())
            frame = msgspec.json.decode(body.encode())
        if c.people is not None:
            entries = get_path(frame, c.people.list)
            if isinstance(entries, list):
                # One entry per person asked, in the order asked: the real one where
                # there is a score, a neutral one in the real entry's shape elsewhere.
                real = {
                    _key(str(e.get(c.people.identifier))): e for e in entries if isinstance(e, dict)
                }
                entries[:] = [
                    real[_key(s.identifier)]
                    if s not in neutral and _key(s.identifier) in real
                    else self._neutral_entry(s, value)
                    for s in route.subjects
                ]
        return UpstreamAnswer(
            status=c.neutral_status if answer is None or answer.status >= 300 else answer.status,
            content_type=c.neutral_content_type,
            body=msgspec.json.encode(frame),
        )

    def _score(self, score: float) -> float | int:
        return round(score) if self.config.score_type == "integer" else score

    def _neutral_entry(self, subject: Subject, value: float | int) -> Any:
        assert self.config.people is not None
        text = self.config.people.neutral_entry.replace(
            "{score}", msgspec.json.encode(value).decode()
        ).replace("{subject}", msgspec.json.encode(subject.identifier).decode())
        return msgspec.json.decode(text.encode())

    def _entry_subjects(self, answer: UpstreamAnswer) -> list[Subject]:
        return [p.subjects[0] for p in self.people_in(answer) if p.subjects]

    def people(self, route: RouteMatch, answer: UpstreamAnswer) -> list[Embedded]:
        return self.people_in(answer)

    def people_in(self, answer: UpstreamAnswer) -> list[Embedded]:
        people = self.config.people
        if people is None:
            return []
        entries = get_path(_decode(answer.body), people.list)
        if not isinstance(entries, list):
            return []
        place = tuple(people.list.split("."))
        found = []
        for i, entry in enumerate(entries):
            value = entry.get(people.identifier) if isinstance(entry, dict) else None
            subjects = (Subject(self._namespace, str(value)),) if value is not None else ()
            found.append(Embedded(subjects=subjects, place=place, index=i))
        return found

    def withhold(
        self,
        route: RouteMatch,
        answer: UpstreamAnswer,
        people: list[Embedded],
        neutral_score: float | None,
    ) -> UpstreamAnswer:
        doc = _decode(answer.body)
        for person in sorted(people, key=lambda p: -p.index):
            entries = get_path(doc, ".".join(str(step) for step in person.place))
            if not isinstance(entries, list) or person.index >= len(entries):
                continue
            if neutral_score is None:
                del entries[person.index]
            else:
                entries[person.index] = self._neutral_entry(
                    person.subjects[0], self._score(neutral_score)
                )
        return msgspec.structs.replace(answer, body=msgspec.json.encode(doc))

    def transform(
        self, route: RouteMatch, answer: UpstreamAnswer, redact: tuple[str, ...], coarsen: bool
    ) -> UpstreamAnswer:
        try:
            doc: Any = msgspec.json.decode(answer.body)
        except msgspec.DecodeError:
            return answer
        semantic = self.config.semantic_fields
        for field in redact:
            for path in semantic.get(field, [field]):
                redact_path(doc, path)
        if coarsen:
            value = get_path(doc, self.config.score_path)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _set_path(doc, self.config.score_path, float(int(value // 10) * 10))
        return msgspec.structs.replace(answer, body=msgspec.json.encode(doc))

    def neutral_id_namespaces(self, template: str) -> tuple[str, ...]:
        return ()  # neutral answers carry no id the gateway makes up

    def identities(self, route: RouteMatch, answer: UpstreamAnswer) -> list[tuple[Subject, ...]]:
        return []  # a YAML-described API names no second identifier of a person

    def canonical(self, answer: UpstreamAnswer) -> UpstreamAnswer:
        try:
            doc = msgspec.json.decode(answer.body)
        except msgspec.DecodeError:
            return answer
        return UpstreamAnswer(
            status=answer.status,
            content_type=self.success_content_type,
            body=msgspec.json.encode(doc),
        )


def _key(identifier: str) -> str:
    """Batch entries echo names in their own case (``PeopleBrowsr`` for ``peoplebrowsr``)."""
    return identifier.lower()


def _decode(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _set_path(doc: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = get_path(doc, ".".join(parents)) if parents else doc
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
