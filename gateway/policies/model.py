"""The shape of ``policies.yaml``, and the lookup context and decision it produces.

Every field is named in plain words for compliance staff. Decoding is validation:
unknown fields are refused (``forbid_unknown_fields``), so a misspelled field is an
error with its line and column, never a silently ignored setting.

A request meets these types in order: the proxy builds a :class:`LookupContext`,
``evaluate`` turns it and the compiled policy into a :class:`Decision`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Outcome = Literal["found", "missing", "pending", "throttled", "error", "objected"]
"""What the upstream said about a subject, classified by its adapter.

``objected`` is set by the gateway itself, before any upstream call, when the
subject is on the objection list (GDPR Art. 21)."""

OUTCOMES: tuple[Outcome, ...] = ("found", "missing", "pending", "throttled", "error", "objected")

ActionName = Literal["deny", "neutralize", "redact", "coarsen", "limit"]


class _Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for every policy-file type: immutable, no unknown fields.

    Subclasses repeat ``frozen=True, kw_only=True``: msgspec applies ``kw_only`` per
    class (without it a required field after an optional one is refused at import),
    and mypy's dataclass check wants ``frozen`` restated.
    """


class Client(_Model, frozen=True, kw_only=True):
    """An internal system that calls the gateway."""

    id: str
    kind: str
    purposes: list[str]
    default_purpose: str | None = None
    description: str | None = None
    # ``sha256:<hex>`` of the client's key. Keys may instead be issued into the data
    # directory with ``gateway clients add``; either way no key is stored in clear.
    key_hash: str | None = None


class Credential(_Model, frozen=True, kw_only=True):
    """Where the upstream expects its key, and where the gateway reads it from."""

    env: str | None = None
    query_param: str | None = None
    header: str | None = None
    prefix: str = ""


class Terms(_Model, frozen=True, kw_only=True):
    """The vendor's terms of use, enforced before the upstream is called."""

    calls_per_second: float | None = None
    calls_per_day: int | None = None
    max_cache_age: str | None = None
    banned_purposes: list[str] = []
    # Why the purposes above are banned, in plain words; shown with every denial
    # of the implicit rule ``terms.<upstream>.banned-purpose``.
    reason: str | None = None
    source: str | None = None


class Neutral(_Model, frozen=True, kw_only=True):
    """The answer given for a missing, pending or objected subject."""

    score: float
    reason: str | None = None


class GenericPeople(_Model, frozen=True, kw_only=True):
    """Where people appear in an answer of a generic API, and what a real entry is.

    For Kred's ``{"data": [{"influence": 773, "name": "PeopleBrowsr", "outreach": 7}], ...}``::

        people:
          list: data
          identifier: name
          neutral_entry: '{"influence": {score}, "name": {subject}, "outreach": 0}'
    """

    # Dotted path of the list of entries, one per person (``data``).
    list: str
    # Field of an entry that holds the identifier that was asked (``name``).
    identifier: str
    # A real entry's fields, in the real order, with ``{score}`` and ``{subject}``
    # (the identifier asked, as a JSON string) where the values go.
    neutral_entry: str


class GenericAdapter(_Model, frozen=True, kw_only=True):
    """Configuration of the ``generic`` adapter: an API described entirely in YAML."""

    # Where the subject identifier is: ``query:<name>`` or ``path:<index>``
    # (0-based segment of the path after the upstream prefix).
    subject: str
    # Dotted path of the score in a success body, e.g. ``data.0.influence``.
    score_path: str
    # Body written for a neutral answer the vendor was not asked for; ``{score}``
    # is replaced by the number, ``{subject}`` by the identifier(s) asked (a JSON string).
    neutral_body: str
    neutral_status: int = 200
    neutral_content_type: str = "application/json"
    # An answer is ``missing`` when its status is listed, or (when set) its body
    # equals ``missing_body`` after parsing, or the value at ``missing_path`` is empty.
    missing_status: list[int] = msgspec.field(default_factory=lambda: [404])
    missing_body: str | None = None
    missing_path: str | None = None
    pending_status: list[int] = msgspec.field(default_factory=lambda: [202])
    throttled_status: list[int] = msgspec.field(default_factory=lambda: [429])
    throttled_header: str | None = None
    subject_separator: str | None = None
    # Query parameters callers may send besides the subject's (for example Kred's
    # ``source``). Any other parameter is refused and never forwarded.
    query_params: list[str] = []
    # Where people appear in answers; with it, a batch answer carries an entry for
    # every person asked, in the order asked, neutral where there is no score.
    people: GenericPeople | None = None
    # Semantic fields a rule may redact by meaning, each mapped to every dotted
    # path that carries it in this API's answers: ``score_trend: [data.*.trend]``.
    semantic_fields: dict[str, list[str]] = {}
    # The JSON type of scores in real answers: a neutral score is written the same way.
    score_type: Literal["number", "integer"] = "number"


class Upstream(_Model, frozen=True, kw_only=True):
    """A scoring API the gateway may call. Only these hosts are ever contacted."""

    name: str
    adapter: str
    base_url: str
    credential: Credential = Credential()
    terms: Terms = Terms()
    neutral: Neutral
    generic: GenericAdapter | None = None
    description: str | None = None
    # For the record of processing (GDPR Art. 30(1)(c)-(e)): who receives the
    # identifiers, where, and which kinds of personal data pass through.
    vendor: str | None = None
    vendor_country: str | None = None
    data_subjects: list[str] = []
    data_categories: list[str] = []


class Controller(_Model, frozen=True, kw_only=True):
    """Who is responsible for this processing (GDPR Art. 30(1)(a) and (f))."""

    name: str
    contact: str
    dpo: str | None = None
    representative: str | None = None
    # How long audit records are kept before they may be pruned, e.g. "6 years".
    audit_retention: str | None = None
    security: str | None = None


class Limit(_Model, frozen=True, kw_only=True):
    """A rate or quota held per client or per upstream."""

    per: Literal["client", "upstream"] = "client"
    calls_per_second: float | None = None
    calls_per_day: int | None = None


class When(_Model, frozen=True, kw_only=True):
    """Conditions of a rule. Every field given must match; a list matches any item.

    ``purpose`` matches the purpose and everything under it: ``employment``
    covers ``employment.recruitment``.
    """

    client: str | list[str] | None = None
    client_kind: str | list[str] | None = None
    purpose: str | list[str] | None = None
    upstream: str | list[str] | None = None
    route: str | list[str] | None = None
    outcome: Outcome | list[Outcome] | None = None
    attributes: dict[str, str] | None = None


class Rule(_Model, frozen=True, kw_only=True):
    """One rule: why it exists, where the law or term is, when it applies, what it does."""

    id: str
    reason: str
    source: str
    when: When = When()
    action: ActionName
    # For ``redact``: semantic fields (``score_trend``), which each upstream's
    # adapter maps to every place its answers carry them, or dotted paths.
    fields: list[str] | None = None
    limit: Limit | None = None


class Settings(_Model, frozen=True, kw_only=True):
    """Policy-wide switches."""

    # Whether a caller may learn that an answer was neutralized (header
    # ``X-Gateway-Neutralized``). Off: neutral answers are indistinguishable.
    reveal_neutralized: bool = False
    # What happens to a lookup the policy does not know how to judge (an unknown
    # client, upstream or purpose): always refused, by an implicit ``policy.*`` rule.
    default_decision: Literal["deny"] = "deny"
    # Directories of YAML test cases (``gateway policy test``), relative to this
    # file. A changed file goes live only if every case in them passes.
    tests: list[str] = []
    # On (the default): a file whose cases fail, or that names none, never goes
    # live; the last good policy stays. Off only for scratch policies.
    require_tests: bool = True
    # What happens to an objected person inside someone else's answer (an
    # influencer list, a batch): ``leave_out`` removes the entry and keeps the
    # counts consistent; ``neutralize`` keeps the entry with the neutral score.
    people_inside_answers: Literal["leave_out", "neutralize"] = "leave_out"


class AuditSettings(_Model, frozen=True, kw_only=True):
    """What the audit log keeps, and for how long."""

    # How long lookup records are kept whole: ``400d``. Older ones are pruned: their
    # bodies are dropped, their hashes kept, so the log still verifies. None: forever.
    retention: str | None = None


class Policy(_Model, frozen=True, kw_only=True):
    """The whole file."""

    version: int = 1
    controller: Controller | None = None
    purposes: dict[str, str]
    clients: list[Client] = []
    upstreams: list[Upstream]
    # Keyed HMAC pseudonyms of subjects who objected, as earlier versions of
    # ``gateway objections add`` wrote them; still honoured (gateway.identity).
    objections: list[str] = []
    settings: Settings = Settings()
    audit: AuditSettings = AuditSettings()
    # Required, even if empty: a file cut off before its rules must not load as a
    # policy that allows everything (fail closed; write ``rules: []`` deliberately).
    rules: list[Rule]


class LookupContext(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a decision may depend on, built by the proxy for one request."""

    client: str
    client_kind: str
    purpose: str
    upstream: str
    route: str
    attributes: dict[str, str] = {}
    outcome: Outcome | None = None


class MatchedRule(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    action: ActionName
    reason: str
    source: str
    line: int | None = None


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The result of ``evaluate``: deny wins; every matched rule is listed."""

    allowed: bool
    matched: tuple[MatchedRule, ...]
    policy_version: str
    deny: MatchedRule | None = None
    neutralize: bool = False
    redact: tuple[str, ...] = ()
    coarsen: bool = False
    limits: tuple[tuple[str, Limit], ...] = ()

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.matched)
