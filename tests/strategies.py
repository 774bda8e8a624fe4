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


# -- hostile policy text ----------------------------------------------------------------

#: Tags a saved policy has been seen to carry, or that PyYAML treats specially.
YAML_TAGS = (
    "!foo", "!", "!!int", "!!float", "!!bool", "!!null", "!!str", "!!binary", "!!timestamp",
    "!!set", "!!omap", "!!pairs", "!!map", "!!seq", "!!merge", "!!value", "!!yaml",
    "!!python/object:os.system", "!!python/object/apply:os.system", "!!python/name:os.system",
    "!<tag:yaml.org,2002:int>", "!<tag:example.com,2000:x>", "!!float#x",
)  # fmt: skip
YAML_SCALARS = (
    "abc", "", "~", "=", "<<", "0x1F", "0o17", "0b101", "1_000", "1e999", "-1e999", ".nan",
    ".inf", "-.inf", "1e-999", "9" * 5000, "9" * 100_000, "-" + "9" * 30, "2026-13-45",
    "2026-12-01T25:61:00Z", "'\\ud800'", '"\\ud800"', '"\\x00"', "yes", "no", "on", "NULL",
    "[a, b]", "{a: 1}", "{a: 1, a: 2}", "[[[[[[[[[[]]]]]]]]]]", "*alias", "&anchor x", "? k",
    "|\n  block", ">-\n  folded", "'unterminated", '"unterminated', "a: b: c", "\t", "\ufeff",
)  # fmt: skip
#: Where a hostile line goes in the shipped policy: a top-level key, a rule's field,
#: a purpose, a client field, a setting.
YAML_ANCHORS = (
    ("\nrules:\n", "\nrules:\n"),
    ("  - id: deny-employment\n", "  - id: deny-employment\n"),
    ("purposes:\n", "purposes:\n"),
    ("  reveal_neutralized: false\n", "  reveal_neutralized: false\n"),
    ("    kind: crm\n", "    kind: crm\n"),
)  # fmt: skip


@st.composite
def hostile_lines(draw: st.DrawFn) -> str:
    """One YAML line with a tag and a value policy files must never choke on."""
    tag = draw(st.sampled_from(("", *YAML_TAGS)))
    value = draw(st.sampled_from(YAML_SCALARS) | st.text(max_size=30))
    key = draw(st.sampled_from(("zzz", "reason", "action", "calls_per_second", "neutral", "? x")))
    indent = draw(st.sampled_from(("", "  ", "    ")))
    return f"{indent}{key}: {tag} {value}".rstrip() + "\n"


@st.composite
def hostile_policy_texts(draw: st.DrawFn, shipped: str) -> bytes:
    """The shipped policy with hostile lines spliced in, or hostile text on its own."""
    kind = draw(st.sampled_from(("spliced", "replaced", "alone", "bytes")))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    lines = "".join(draw(st.lists(hostile_lines(), min_size=1, max_size=4)))
    if kind == "alone":
        return lines.encode("utf-8", "surrogatepass")
    anchor, _ = draw(st.sampled_from(YAML_ANCHORS))
    if kind == "replaced":
        value = draw(st.sampled_from(YAML_SCALARS))
        tag = draw(st.sampled_from(YAML_TAGS))
        text = shipped.replace("calls_per_second: 9", f"calls_per_second: {tag} {value}", 1)
    else:
        text = shipped.replace(anchor, anchor + lines, 1)
    return text.encode("utf-8", "surrogatepass")
