"""Klout API v1 and v2 (reference/upstream-apis.md §1).

v1 (``/1/...``) takes ``users=`` lists of up to 5 Twitter screen names and answers
``{"status":200,"users":[...]}`` with only the users it knows; when it knows none it
answers ``{"status":200,"headers":[],"body":{"error":"No users"}}`` with HTTP 200
or 404: the same body for a person who opted out and one who never existed.

v2 (``/v2/...``) is a two-step flow: resolve a network identity to a kloutId, then
read the user by kloutId; unknown people are a 404. So that a neutral answer works
for the *whole* flow, the identity step of a missing person yields a **neutral
kloutId**: 18 digits like a real one, whose last 9 digits are a keyed MAC of the
first 9. The gateway recognises such ids on the next step and answers them itself,
without asking the upstream about an id it invented. A real kloutId passes the MAC
check by chance with probability 1e-9; such a person would get the neutral answer,
never a wrong person's score.

Mashery fronted the API: over-limit answers are **HTTP 403**, not 429, with
``X-Mashery-Error-Code: ERR_403_DEVELOPER_OVER_QPS`` or ``_OVER_RATE`` (§1.3).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.mac import KeyedMac
from gateway.policies.model import Outcome
from gateway.upstreams.base import (
    Classification,
    Embedded,
    InvalidSubject,
    RouteMatch,
    Subject,
    UpstreamAnswer,
    bucket_of,
)
from gateway.upstreams.transform import redact as redact_path

CONTENT_TYPE = "application/json; charset=utf-8"
MAX_V1_USERS = 5

# Twitter screen names: 1-15 letters, digits, underscore. Ids: digits only (the
# PHP SDK validates tw/gp/ig/ks ids with ``Digits``). A strict charset keeps
# CR/LF/NUL and path tricks out of anything forwarded (reliability.md #7).
SCREEN_NAME = re.compile(r"[A-Za-z0-9_]{1,15}")
NUMERIC_ID = re.compile(r"[0-9]{1,20}")

V1_ROUTES = {
    "/1/klout.json",
    "/1/users/show.json",
    "/1/users/topics.json",
    "/1/soi/influenced_by.json",
    "/1/soi/influencer_of.json",
}
IDENTITY_NETWORKS = {"tw": "twitter_id", "gp": "google_id", "ig": "instagram_id"}
REVERSE_NAMESPACES = {"tw": "twitter_id", "gp": "google_id"}
# Id spaces in which neutral answers carry ids the gateway makes up (kloutIds of the
# identity step, Twitter and Google+ ids of reverse lookups and v1 user objects),
# and the length to give them until the gateway has seen real ones: real kloutIds
# ran from 3 to 19 digits, most of them 18; Twitter ids of the time had 8 or 9
# digits, Google+ ids 21. Once real ids pass, their lengths are used instead.
# Routes whose answers can show two identifiers of one person (besides identity.json).
_LINKING_TEMPLATES = frozenset(
    {"/v2/user.json/{kloutId}", "/v2/user.json/{kloutId}/influence", "/1/users/show.json"}
)
ID_LENGTHS = {"klout_id": (18, 18), "twitter_id": (9, 9), "google_id": (21, 21)}
USER_SUFFIXES = {"", "/score", "/topics", "/influence"}
THROTTLE_CODES = {"ERR_403_DEVELOPER_OVER_QPS", "ERR_403_DEVELOPER_OVER_RATE"}

_encode = msgspec.json.Encoder().encode
# Query parameters each route declares (besides the key, which the gateway owns).
# v2 lookups by path take none.
_USERS = frozenset({"users"})
# Where other people appear in an answer, per route: the list of entries, and the
# field that counts them (kept equal to the list's length when someone is left out).
_V2_PEOPLE = {
    "/v2/user.json/{kloutId}/influence": (
        ("myInfluencers", "myInfluencersCount"),
        ("myInfluencees", "myInfluenceesCount"),
    ),
}
# Semantic fields: what a rule may redact by meaning, and every place Klout's
# answers carry it, nested people included. A rule's field that is not listed
# here is a dotted path (``score.scoreDelta``).
SEMANTIC_FIELDS: dict[str, tuple[str, ...]] = {
    "score_trend": (
        "users.*.score.slope",
        "users.*.score.delta_1day",
        "users.*.score.delta_5day",
        "scoreDelta",
        "scoreDeltas",
        "score.scoreDelta",
        "myInfluencers.*.entity.payload.scoreDeltas",
        "myInfluencees.*.entity.payload.scoreDeltas",
    ),
    "score_class": (
        "users.*.score.kclass_id",
        "users.*.score.kclass",
        "users.*.score.kclass_description",
    ),
    "reach": (
        "users.*.score.true_reach",
        "users.*.score.network_score",
        "users.*.score.amplification_score",
    ),
}
# Klout classes (id, name) a neutral v1 user may be shown with; the two the
# simulator's people have, and the other common mid-range ones.
_KCLASSES = (
    (1, "Observer"),
    (2, "Dabbler"),
    (5, "Conversationalist"),
    (9, "Explorer"),
    (10, "Socializer"),
    (13, "Networker"),
)
_V1_PEOPLE = {
    "/1/soi/influenced_by.json": "influencers",
    "/1/soi/influencer_of.json": "influencees",
}
_SCREEN_NAME = frozenset({"screenName"})


class KloutAdapter:
    """Klout v1 + v2. ``id_key`` keys the neutral kloutIds (from the data directory)."""

    success_content_type = CONTENT_TYPE
    #: Id spaces where the gateway issues neutral ids, with default real lengths.
    id_lengths: Mapping[str, tuple[int, int]] = ID_LENGTHS

    def __init__(self, name: str, id_key: bytes) -> None:
        self.name = name
        self._id_mac = KeyedMac(id_key)

    # -- neutral ids -------------------------------------------------------------

    def _mac(self, label: bytes, message: str, digits: int) -> str:
        mac = self._id_mac.digest(label + b"\x00" + message.encode())
        return str(int.from_bytes(mac[:8], "big") % 10**digits).zfill(digits)

    def neutral_klout_id(self, subject: Subject) -> str:
        """A stable, per-person kloutId the gateway will recognise as its own."""
        prefix = "1" + self._mac(b"klout-id", f"{subject.namespace}:{subject.identifier}", 8)
        return prefix + self._mac(b"klout-id-mac", prefix, 9)

    def is_neutral_klout_id(self, klout_id: str) -> bool:
        if len(klout_id) != 18:
            return False
        return hmac.compare_digest(klout_id[9:], self._mac(b"klout-id-mac", klout_id[:9], 9))

    def _neutral_numeric(self, label: str, subject: Subject, digits: int) -> str:
        message = f"{subject.namespace}:{subject.identifier}"
        return "1" + self._mac(label.encode(), message, digits - 1)

    # -- matching ------------------------------------------------------------------

    def match(self, method: str, path: str, query: list[tuple[str, str]]) -> RouteMatch | None:
        if method != "GET":
            return None
        if path in V1_ROUTES:
            users = [v for k, v in query if k == "users"]
            if len(users) != 1:
                raise InvalidSubject("v1 routes take exactly one users= parameter")
            names = users[0].split(",")
            if not 1 <= len(names) <= MAX_V1_USERS:
                raise InvalidSubject(f"users= takes 1 to {MAX_V1_USERS} screen names")
            subjects = tuple(_screen_name(n) for n in names)
            if len(set(subjects)) != len(subjects):
                raise InvalidSubject("users= names a person twice")
            return RouteMatch(template=path, subjects=subjects, params=_USERS)
        if not path.startswith("/v2/"):
            return None
        parts = path[4:].split("/")
        if parts[0] == "identity.json":
            return self._match_identity(parts[1:], query)
        if parts[0] == "user.json" and len(parts) in (2, 3):
            klout_id = parts[1]
            suffix = "/" + parts[2] if len(parts) == 3 else ""
            if suffix not in USER_SUFFIXES:
                return None
            subject = Subject("klout_id", _numeric(klout_id))
            template = "/v2/user.json/{kloutId}" + suffix
            if self.is_neutral_klout_id(klout_id):
                return RouteMatch(template=template, subjects=(subject,), local_subjects=(subject,))
            return RouteMatch(template=template, subjects=(subject,))
        return None

    def _match_identity(self, parts: list[str], query: list[tuple[str, str]]) -> RouteMatch | None:
        if len(parts) == 2 and parts[0] in IDENTITY_NETWORKS:
            subject = Subject(IDENTITY_NETWORKS[parts[0]], _numeric(parts[1]))
            return RouteMatch(template=f"/v2/identity.json/{parts[0]}/{{id}}", subjects=(subject,))
        if parts == ["twitter"]:
            names = [v for k, v in query if k == "screenName"]
            if len(names) != 1:
                raise InvalidSubject("identity.json/twitter takes exactly one screenName=")
            return RouteMatch(
                template="/v2/identity.json/twitter",
                subjects=(_screen_name(names[0]),),
                params=_SCREEN_NAME,
            )
        if len(parts) == 3 and parts[0] == "klout" and parts[2] in ("tw", "gp"):
            klout_id = parts[1]
            subject = Subject("klout_id", _numeric(klout_id))
            template = f"/v2/identity.json/klout/{{kloutId}}/{parts[2]}"
            local = (subject,) if self.is_neutral_klout_id(klout_id) else ()
            return RouteMatch(template=template, subjects=(subject,), local_subjects=local)
        return None

    def subjects_for(self, identifier: str) -> tuple[Subject, ...]:
        """A screen name, or any numeric id: Twitter, Google+, Instagram or kloutId."""
        subjects: list[Subject] = []
        if SCREEN_NAME.fullmatch(identifier):
            subjects.append(Subject("twitter_screen_name", identifier.lower()))
        if NUMERIC_ID.fullmatch(identifier):
            namespaces = [*IDENTITY_NETWORKS.values(), "klout_id"]
            subjects += [Subject(ns, identifier) for ns in namespaces]
        return tuple(subjects)

    def without_subjects(
        self, route: RouteMatch, path: str, query: list[tuple[str, str]], drop: set[Subject]
    ) -> tuple[str, list[tuple[str, str]]] | None:
        keep = [s for s in route.subjects if s not in drop]
        if not keep:
            return None
        if route.template in V1_ROUTES:
            users = ",".join(s.identifier for s in keep)
            return path, [(k, users if k == "users" else v) for k, v in query]
        return path, query

    # -- classification ------------------------------------------------------------

    def classify(self, route: RouteMatch, answer: UpstreamAnswer) -> Classification:
        status = answer.status
        throttled = _is_throttle(answer)
        if throttled:
            return _uniform(route, "throttled")
        if status == 202:
            return _uniform(route, "pending")
        if route.template in V1_ROUTES:
            return self._classify_v1(route, answer)
        if status == 404:
            return _uniform(route, "missing")
        if status == 200:
            doc = _json(answer.body)
            if doc is None or not _v2_shape_ok(route.template, doc):
                return _uniform(route, "error")
            return _uniform(route, "found")
        return _uniform(route, "error")

    def _classify_v1(self, route: RouteMatch, answer: UpstreamAnswer) -> Classification:
        if answer.status not in (200, 404):
            return _uniform(route, "error")
        doc = _json(answer.body)
        if not isinstance(doc, dict):
            return _uniform(route, "error")
        body = doc.get("body")
        if isinstance(body, dict) and body.get("error") == "No users":
            return _uniform(route, "missing")
        users = doc.get("users")
        if answer.status != 200 or not isinstance(users, list):
            return _uniform(route, "error")
        known: set[str] = set()
        for user in users:
            if not isinstance(user, dict) or not isinstance(user.get("twitter_screen_name"), str):
                return _uniform(route, "error")
            known.add(user["twitter_screen_name"].lower())
        per: dict[Subject, Outcome] = {
            s: ("found" if s.identifier in known else "missing") for s in route.subjects
        }
        overall: Outcome = "found" if any(o == "found" for o in per.values()) else "missing"
        return Classification(outcome=overall, per_subject=per)

    # -- neutral answers -----------------------------------------------------------

    def neutral_answer(
        self,
        route: RouteMatch,
        answer: UpstreamAnswer | None,
        neutral: set[Subject],
        score: float,
        ids: Mapping[tuple[Subject, str], str] | None = None,
    ) -> UpstreamAnswer:
        """``ids`` holds the neutral ids the identity graph issued, by (subject,
        namespace) as :meth:`neutral_id_namespaces` asked; without it (adapter used
        alone) ids are derived from ``id_key``."""
        ids = ids or {}
        template = route.template
        if template in V1_ROUTES:
            doc = _json(answer.body) if answer is not None and answer.status == 200 else None
            existing = {}
            if isinstance(doc, dict) and isinstance(doc.get("users"), list):
                existing = {u["twitter_screen_name"].lower(): u for u in doc["users"]}
            users = []
            for subject in route.subjects:
                if subject in neutral or subject.identifier not in existing:
                    users.append(self._v1_neutral_user(template, subject, score, ids))
                else:
                    users.append(existing[subject.identifier])
            return _ok({"status": 200, "users": users})
        subject = route.subjects[0]
        return _ok(self._v2_neutral(template, subject, score, ids))

    def _v1_neutral_user(
        self,
        template: str,
        subject: Subject,
        score: float,
        ids: Mapping[tuple[Subject, str], str],
    ) -> dict[str, Any]:
        name = subject.identifier
        if template == "/1/klout.json":
            return {"twitter_screen_name": name, "kscore": score}
        if template == "/1/users/show.json":
            return {
                "twitter_id": ids.get((subject, "twitter_id"))
                or self._neutral_numeric("twitter-id", subject, 9),
                "twitter_screen_name": name,
                "score": self._v1_neutral_score(subject, score),
            }
        if template == "/1/users/topics.json":
            return {"twitter_screen_name": name, "topics": []}
        key = "influencers" if template.endswith("influenced_by.json") else "influencees"
        return {"twitter_screen_name": name, key: []}

    def _v1_neutral_score(self, subject: Subject, score: float) -> dict[str, Any]:
        """A v1 score object for someone without a score: the neutral score, and for
        the other fields what a real person with that score could have, drawn per
        person (keyed, so one person always gets the same) rather than one constant
        set that would mark every neutral answer. Trends are centred on zero, so on
        average a neutral person neither rises nor falls in anyone's ranking."""
        draw = self._draws(subject)
        kclass_id, kclass = _KCLASSES[int(draw[0] * len(_KCLASSES))]
        day = round((draw[1] - 0.5) * 0.4, 2)
        return {
            "kscore": score,
            "slope": day,
            "description": "",
            "kclass_id": kclass_id,
            "kclass": kclass,
            "kclass_description": "",
            "kscore_description": "",
            "network_score": round(score * (0.9 + 0.2 * draw[2]), 1),
            "amplification_score": round(score * (0.2 + 0.6 * draw[3]), 1),
            "true_reach": int(10 ** (1.5 + 2.0 * draw[4])),
            "delta_1day": day,
            "delta_5day": round(day * 3 + (draw[5] - 0.5) * 0.4, 2),
        }

    def _draws(self, subject: Subject) -> list[float]:
        """Six numbers in [0, 1) fixed for this subject under the gateway's key."""
        message = f"{subject.namespace}:{subject.identifier}".encode()
        mac = self._id_mac.digest(b"neutral-fields\x00" + message)
        return [int.from_bytes(mac[i : i + 4], "big") / 2**32 for i in range(0, 24, 4)]

    def _v2_neutral(
        self, template: str, subject: Subject, score: float, ids: Mapping[tuple[Subject, str], str]
    ) -> Any:
        deltas = {"dayChange": 0.0, "weekChange": 0.0, "monthChange": 0.0}
        if template.startswith("/v2/identity.json/klout/"):
            network = template.rsplit("/", 1)[1]
            issued = ids.get((subject, REVERSE_NAMESPACES[network]))
            return {
                "id": issued or self._neutral_numeric(f"{network}-id", subject, 9),
                "network": network,
            }
        if template.startswith("/v2/identity.json/"):
            issued = ids.get((subject, "klout_id"))
            return {"id": issued or self.neutral_klout_id(subject), "network": "ks"}
        klout_id = subject.identifier
        if template == "/v2/user.json/{kloutId}":
            return {
                "kloutId": klout_id,
                # The gateway keeps no names in clear, so it cannot say whose id this
                # is: an empty nick (README, "Residual differences").
                "nick": "",
                "score": {"score": score, "bucket": bucket_of(score)},
                "scoreDeltas": deltas,
            }
        if template.endswith("/score"):
            return {"score": score, "scoreDelta": deltas, "bucket": bucket_of(score)}
        if template.endswith("/topics"):
            return []
        return {
            "myInfluencers": [],
            "myInfluencees": [],
            "myInfluencersCount": 0,
            "myInfluenceesCount": 0,
        }

    # -- people: who an answer shows to be one person --------------------------------

    def neutral_id_namespaces(self, template: str) -> tuple[str, ...]:
        """Id spaces of the ids a neutral answer on ``template`` carries per subject."""
        if template.startswith("/v2/identity.json/klout/"):
            return (REVERSE_NAMESPACES[template.rsplit("/", 1)[1]],)
        if template.startswith("/v2/identity.json/"):
            return ("klout_id",)
        if template == "/1/users/show.json":
            return ("twitter_id",)
        return ()

    def identities(self, route: RouteMatch, answer: UpstreamAnswer) -> list[tuple[Subject, ...]]:
        """Groups of identifiers a found answer shows to belong to one person: the
        identity step (asked id → kloutId), reverse lookups (kloutId → network id),
        user objects (kloutId ↔ nick), v1 users (screen name ↔ Twitter id) and the
        people inside influence lists. Only well-formed identifiers are taken."""
        template = route.template
        if not template.startswith("/v2/identity.json/") and template not in _LINKING_TEMPLATES:
            return []  # scores and topics name nobody else: no second decode
        doc = _json(answer.body)
        groups: list[tuple[Subject, ...]] = []
        if template.startswith("/v2/identity.json/") and isinstance(doc, dict):
            found = doc.get("id")
            if template.startswith("/v2/identity.json/klout/"):
                namespace = REVERSE_NAMESPACES[template.rsplit("/", 1)[1]]
            else:
                namespace = "klout_id"
            other = _subject(namespace, found)
            if other is not None:
                groups.append((route.subjects[0], other))
        elif template == "/v2/user.json/{kloutId}" and isinstance(doc, dict):
            nick = _subject("twitter_screen_name", doc.get("nick"))
            if nick is not None:
                groups.append((route.subjects[0], nick))
        elif template == "/v2/user.json/{kloutId}/influence" and isinstance(doc, dict):
            for key in ("myInfluencers", "myInfluencees"):
                for item in doc.get(key) or ():
                    entity = item.get("entity") if isinstance(item, dict) else None
                    if not isinstance(entity, dict):
                        continue
                    payload = entity.get("payload")
                    nick = payload.get("nick") if isinstance(payload, dict) else None
                    group = [_subject("klout_id", entity.get("id")),
                             _subject("twitter_screen_name", nick)]  # fmt: skip
                    people = tuple(g for g in group if g is not None)
                    if len(people) == 2:
                        groups.append(people)
        elif template == "/1/users/show.json" and isinstance(doc, dict):
            for user in doc.get("users") or ():
                if isinstance(user, dict):
                    name = _subject("twitter_screen_name", user.get("twitter_screen_name"))
                    twitter = _subject("twitter_id", user.get("twitter_id"))
                    if name is not None and twitter is not None:
                        groups.append((name, twitter))
        return groups

    # -- people inside answers --------------------------------------------------------

    def people(self, route: RouteMatch, answer: UpstreamAnswer) -> list[Embedded]:
        template = route.template
        if template not in _V2_PEOPLE and template not in _V1_PEOPLE:
            return []
        doc = _json(answer.body)
        if not isinstance(doc, dict):
            return []
        found: list[Embedded] = []
        if template in _V2_PEOPLE:
            for list_name, _count in _V2_PEOPLE[template]:
                for i, entry in enumerate(_list(doc.get(list_name))):
                    found.append(Embedded(subjects=_v2_entity(entry), place=(list_name,), index=i))
            return found
        field = _V1_PEOPLE[template]
        for u, user in enumerate(_list(doc.get("users"))):
            entries = _list(user.get(field)) if isinstance(user, dict) else []
            for i, entry in enumerate(entries):
                name = entry.get("twitter_screen_name") if isinstance(entry, dict) else None
                subjects = (Subject("twitter_screen_name", name.lower()),) if name else ()
                found.append(Embedded(subjects=subjects, place=("users", u, field), index=i))
        return found

    def withhold(
        self,
        route: RouteMatch,
        answer: UpstreamAnswer,
        people: list[Embedded],
        neutral_score: float | None,
    ) -> UpstreamAnswer:
        doc = _json(answer.body)
        # Right to left, so earlier indexes stay valid while entries are removed.
        for person in sorted(people, key=lambda p: (p.place, -p.index)):
            entries = _at(doc, person.place)
            if not isinstance(entries, list) or person.index >= len(entries):
                continue
            if neutral_score is None:
                del entries[person.index]
            else:
                entries[person.index] = _neutral_entry(entries[person.index], neutral_score)
        for list_name, count in _V2_PEOPLE.get(route.template, ()):
            if isinstance(doc, dict) and count in doc and isinstance(doc.get(list_name), list):
                doc[count] = len(doc[list_name])
        return _ok(doc, status=answer.status)

    # -- transforms ------------------------------------------------------------------

    def transform(
        self, route: RouteMatch, answer: UpstreamAnswer, redact: tuple[str, ...], coarsen: bool
    ) -> UpstreamAnswer:
        doc = _json(answer.body)
        if doc is None:
            return answer
        if coarsen:
            _coarsen(doc)
        for field in redact:
            for path in SEMANTIC_FIELDS.get(field, (field,)):
                redact_path(doc, path)
        return _ok(doc, status=answer.status)

    def canonical(self, answer: UpstreamAnswer) -> UpstreamAnswer:
        """Re-encode a JSON success answer exactly as neutral answers are encoded,
        so formatting never tells a real answer from a neutral one."""
        doc = _json(answer.body)
        return answer if doc is None else _ok(doc, status=answer.status)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _at(doc: Any, place: tuple[str | int, ...]) -> Any:
    node = doc
    for step in place:
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            node = node[step]
        elif isinstance(step, str) and isinstance(node, dict):
            node = node.get(step)
        else:
            return None
    return node


def _v2_entity(entry: Any) -> tuple[Subject, ...]:
    """The identifiers a v2 influence entry shows: its kloutId and its nick."""
    entity = entry.get("entity") if isinstance(entry, dict) else None
    if not isinstance(entity, dict):
        return ()
    subjects: list[Subject] = []
    if isinstance(entity.get("id"), str):
        subjects.append(Subject("klout_id", entity["id"]))
    payload = entity.get("payload")
    if isinstance(payload, dict):
        nick = payload.get("nick")
        if isinstance(nick, str):
            subjects.append(Subject("twitter_screen_name", nick.lower()))
        if isinstance(payload.get("kloutId"), str) and payload["kloutId"] != entity.get("id"):
            subjects.append(Subject("klout_id", payload["kloutId"]))
    return tuple(subjects)


def _neutral_entry(entry: Any, score: float) -> Any:
    """The entry with the neutral score and no movement: same fields, same types."""
    if not isinstance(entry, dict):
        return entry
    if "kscore" in entry:
        return {**entry, "kscore": score}
    entity = entry.get("entity")
    payload = entity.get("payload") if isinstance(entity, dict) else None
    if isinstance(entity, dict) and isinstance(payload, dict):
        payload = dict(payload)
        if isinstance(payload.get("score"), dict):
            payload["score"] = {**payload["score"], "score": score, "bucket": bucket_of(score)}
        if isinstance(payload.get("scoreDeltas"), dict):
            payload["scoreDeltas"] = {k: 0.0 for k in payload["scoreDeltas"]}
        return {**entry, "entity": {**entity, "payload": payload}}
    return entry


def _coarsen(node: Any) -> None:
    """Replace every score with its decile's lower bound and drop deltas.

    "Display-only" use (EU AI Act Art. 5(1)(c) risk): the bucket stays readable,
    the precision that would rank people is gone.
    """
    if isinstance(node, list):
        for item in node:
            _coarsen(item)
        return
    if not isinstance(node, dict):
        return
    for key in ("scoreDelta", "scoreDeltas"):
        node.pop(key, None)
    for key in ("slope", "delta_1day", "delta_5day"):
        if key in node:
            node[key] = 0.0
    for key in ("score", "kscore", "network_score", "amplification_score"):
        value = node.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bucket = bucket_of(float(value))
            node[key] = float(bucket.split("-")[0])
            if key == "score":
                node["bucket"] = bucket
    for value in node.values():
        if isinstance(value, (dict, list)):
            _coarsen(value)


def _subject(namespace: str, value: Any) -> Subject | None:
    """A subject from a value in an answer, if it has the shape of that id space."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    if namespace == "twitter_screen_name":
        return Subject(namespace, value.lower()) if SCREEN_NAME.fullmatch(value) else None
    return Subject(namespace, value) if NUMERIC_ID.fullmatch(value) else None


def _screen_name(name: str) -> Subject:
    if not SCREEN_NAME.fullmatch(name):
        raise InvalidSubject("a Twitter screen name is 1-15 letters, digits or underscores")
    # Twitter screen names are case-insensitive: one person, one pseudonym.
    return Subject("twitter_screen_name", name.lower())


def _numeric(value: str) -> str:
    if not NUMERIC_ID.fullmatch(value):
        raise InvalidSubject("this identifier is 1-20 digits")
    return value


def _is_throttle(answer: UpstreamAnswer) -> bool:
    if answer.status == 429:
        return True
    if answer.status != 403:
        return False
    return any(k == "x-mashery-error-code" and v in THROTTLE_CODES for k, v in answer.headers)


def _uniform(route: RouteMatch, outcome: Outcome) -> Classification:
    return Classification(outcome=outcome, per_subject={s: outcome for s in route.subjects})


def _json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _v2_shape_ok(template: str, doc: Any) -> bool:
    """Enough of the documented shape that a caller will not misread it as a score."""
    if template.startswith("/v2/identity.json/"):
        return isinstance(doc, dict) and isinstance(doc.get("id"), str)
    if template == "/v2/user.json/{kloutId}":
        score = doc.get("score") if isinstance(doc, dict) else None
        return isinstance(score, dict) and _is_number(score.get("score"))
    if template.endswith("/score"):
        return isinstance(doc, dict) and _is_number(doc.get("score"))
    if template.endswith("/topics"):
        return isinstance(doc, list)
    return isinstance(doc, dict)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ok(doc: Any, status: int = 200) -> UpstreamAnswer:
    return UpstreamAnswer(status=status, content_type=CONTENT_TYPE, body=_encode(doc))
