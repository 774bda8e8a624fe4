"""Shared Hypothesis strategies: policies built from a small vocabulary, and lookups."""

from __future__ import annotations

from typing import Any, get_args

from hypothesis import strategies as st

from gateway.policies.model import (
    OUTCOMES,
    ActionName,
    Client,
    Limit,
    LookupContext,
    Neutral,
    Policy,
    Rule,
    Terms,
    Upstream,
    When,
)

PURPOSES = (
    "employment",
    "employment.recruitment",
    "marketing",
    "marketing.advertising",
    "marketing.advertising.third_party",
    "marketing.advertising.third_party.targeted",
    "marketing.communications",
    "marketing.communications.email",
    "sales",
    "essential",
    "essential.service",
)
CLIENTS = (("crm", "crm"), ("ats", "hr"), ("mail", "marketing"), ("desk", "support"))
KINDS = ("crm", "hr", "marketing", "support")
UPSTREAMS = ("klout", "kred")
ROUTES = (
    "/v2/user.json/{kloutId}",
    "/v2/user.json/{kloutId}/score",
    "/v2/identity.json/tw/{id}",
    "/1/klout.json",
)
ROUTE_PATTERNS = (*ROUTES, "/v2/user.json/*", "/v2/**", "/v2/user.json/{id}/score")
ATTRIBUTES = (("jurisdiction", "EU"), ("jurisdiction", "US-NY-NYC"), ("human_review", "true"))

# Values that look like a purpose of the vocabulary but are not it.
SPOOFED_PURPOSES = (
    "Employment",
    "employment ",
    " employment",
    "\u0435mployment",  # Cyrillic small ie
    "employment\u200b",  # zero-width space
    "employment.",
    ".employment",
    "employment..recruitment",
    "EMPLOYMENT.recruitment",
    "employment/recruitment",
    "ｅｍｐｌｏｙｍｅｎｔ",  # full-width
    "",
)


def _one_or_many(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.sampled_from(values),
        st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True),
    )


_WHEN_PARTS = {
    "client": _one_or_many(tuple(c for c, _ in CLIENTS)),
    "client_kind": _one_or_many(KINDS),
    "purpose": _one_or_many(PURPOSES),
    "upstream": _one_or_many(UPSTREAMS),
    "route": _one_or_many(ROUTE_PATTERNS),
    "outcome": _one_or_many(OUTCOMES),
    "attributes": st.none()
    | st.dictionaries(
        st.sampled_from(("jurisdiction", "human_review")),
        st.sampled_from(("EU", "US-NY-NYC", "true")),
        min_size=1,
        max_size=2,
    ),
}
# Strategies are built once: building them inside a composite costs more than drawing.
whens: st.SearchStrategy[When] = st.builds(When, **_WHEN_PARTS)
_ACTIONS: st.SearchStrategy[ActionName] = st.sampled_from(get_args(ActionName))
_FIELDS = st.lists(st.sampled_from(("a", "b.c", "d")), min_size=1, max_size=2)
_CLIENT_PURPOSES = st.lists(st.sampled_from(PURPOSES), min_size=1, max_size=3, unique=True)
_BANNED = st.lists(st.sampled_from(PURPOSES), max_size=2, unique=True)


@st.composite
def rules(draw: st.DrawFn, index: int) -> Rule:
    action = draw(_ACTIONS)
    return Rule(
        id=f"rule-{index}",
        reason="r",
        source="s",
        when=draw(whens),
        action=action,
        fields=draw(_FIELDS) if action == "redact" else None,
        limit=Limit(per="upstream", calls_per_second=float(index + 1))
        if action == "limit"
        else None,
    )


@st.composite
def policies(draw: st.DrawFn, max_rules: int = 12) -> Policy:
    """A valid policy over the fixed vocabulary, with random rules and terms."""
    count = draw(st.integers(0, max_rules))
    banned = draw(_BANNED)
    return Policy(
        purposes={p: p for p in PURPOSES},
        clients=[
            Client(
                id=cid,
                kind=kind,
                purposes=draw(_CLIENT_PURPOSES),
            )
            for cid, kind in CLIENTS
        ],
        upstreams=[
            Upstream(
                name=name,
                adapter="klout",
                base_url="http://example.invalid",
                neutral=Neutral(score=40),
                terms=Terms(banned_purposes=banned if name == "klout" else [], source="terms"),
            )
            for name in UPSTREAMS
        ],
        rules=[draw(rules(i)) for i in range(count)],
    )


_SAFE_PURPOSES = st.sampled_from(PURPOSES)
_HOSTILE_PURPOSES = _SAFE_PURPOSES | st.sampled_from(SPOOFED_PURPOSES) | st.text(max_size=20)
_HOSTILE_ROUTES = st.sampled_from(ROUTES) | st.text(max_size=20)
_CONTEXT_ATTRIBUTES = st.dictionaries(
    st.sampled_from(("jurisdiction", "human_review")),
    st.sampled_from(("EU", "US-NY-NYC", "true", "false")),
    max_size=2,
)
_OUTCOME = st.none() | st.sampled_from(OUTCOMES)


@st.composite
def contexts(draw: st.DrawFn, hostile: bool = True) -> LookupContext:
    """A lookup using the vocabulary, sometimes with unknown or spoofed values."""
    client, kind = draw(st.sampled_from(CLIENTS))
    if hostile:
        client = draw(st.sampled_from((client, "unknown")))
    return LookupContext(
        client=client,
        client_kind=draw(st.sampled_from((kind, *KINDS))),
        purpose=draw(_HOSTILE_PURPOSES if hostile else _SAFE_PURPOSES),
        upstream=draw(st.sampled_from(UPSTREAMS + (("nowhere",) if hostile else ()))),
        route=draw(_HOSTILE_ROUTES if hostile else st.sampled_from(ROUTES)),
        attributes=draw(_CONTEXT_ATTRIBUTES),
        outcome=draw(_OUTCOME),
    )
