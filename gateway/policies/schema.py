"""JSON Schema of ``policies.yaml``, so editors complete field names and flag mistakes.

Generated from the model (``msgspec.json.schema(Policy)``), with a plain-words
description for every field and the formats the loader enforces (purpose names,
durations). ``gateway policy schema`` prints it; the copy in
``policy.schema.json`` beside this module is what the modeline at the top of
``policies.yaml`` points the YAML language server to. A test keeps the two equal.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from gateway.policies.model import Policy

__all__ = ["SCHEMA_FILE", "policy_schema", "schema_json"]

SCHEMA_FILE = Path(__file__).with_name("policy.schema.json")

_PURPOSE = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
_DURATION = r"^[1-9][0-9]*[dhms]$"

_HELP: dict[str, dict[str, str]] = {
    "Policy": {
        "version": "Format version of this file; 1.",
        "controller": "Who is responsible for the processing, for the record of processing "
        "(GDPR Art. 30): name, contact, data protection officer, audit retention.",
        "purposes": "The purpose vocabulary: each purpose name and a one-line meaning. "
        "Names are lowercase and dotted; a rule on a purpose covers those under it.",
        "clients": "The internal systems allowed to call the gateway.",
        "upstreams": "The scoring services the gateway may contact; no other host is.",
        "objections": "Pseudonyms (hmac-sha256:...) of people who objected to being "
        "scored, as earlier versions wrote them; still honoured. New objections go to "
        "the store: gateway objections add.",
        "settings": "Policy-wide switches.",
        "audit": "What the audit log keeps, and for how long (retention).",
        "rules": "The rules, in order. Deny wins; every matching rule is listed.",
    },
    "Client": {
        "id": "Short name of the system, used in rules and audit records.",
        "kind": "What sort of system it is, e.g. hr, crm, support, marketing.",
        "purposes": "The purposes this system may declare (or narrower ones under them).",
        "default_purpose": "Purpose used when a request declares none; one of 'purposes'.",
        "description": "Free text for people reading this file.",
        "key_hash": "sha256:<hex> of the client's key. Prefer 'gateway clients add'.",
    },
    "Upstream": {
        "name": "Short name; the gateway serves it under /<name>/.",
        "adapter": "Which API family it is: klout or generic.",
        "base_url": "http(s) address of the API, without query or fragment.",
        "credential": "Where the real upstream key goes, and which environment variable holds it.",
        "terms": "The vendor's terms of use: rate limits, cache age, banned purposes.",
        "neutral": "The answer given for people without a score.",
        "generic": "Configuration of the generic adapter (adapter: generic only).",
        "description": "Free text for people reading this file.",
        "vendor": "The company that runs this API: the recipient of identifiers (Art. 30).",
        "vendor_country": "Country where the vendor processes the data; outside the EEA "
        "it is a transfer to a third country (Art. 30(1)(e)).",
        "data_subjects": "Whose data passes through, e.g. customers, prospects.",
        "data_categories": "Kinds of personal data sent or received, e.g. social-media "
        "handle, influence score.",
    },
    "Controller": {
        "name": "The organisation responsible for the processing.",
        "contact": "How to reach it: address, email.",
        "dpo": "Name and contact of the data protection officer.",
        "representative": "EU representative, if the controller is outside the EU.",
        "audit_retention": "How long audit records are kept, e.g. 6 years.",
        "security": "The security measures, in a sentence (Art. 30(1)(g)).",
    },
    "Credential": {
        "env": "Name of the environment variable holding the upstream key.",
        "query_param": "The key goes in this query parameter (Klout: key).",
        "header": "The key goes in this header.",
        "prefix": "Text put before the key, e.g. 'Bearer '.",
    },
    "Terms": {
        "calls_per_second": "Most calls per second the terms allow.",
        "calls_per_day": "Most calls per day the terms allow.",
        "max_cache_age": "Longest an answer may be kept: 7d, 24h, 30m or 60s.",
        "banned_purposes": "Purposes the terms forbid; refused by the rule "
        "terms.<upstream>.banned-purpose.",
        "reason": "Why the purposes are banned, in plain words.",
        "source": "Link to the terms clause.",
    },
    "Neutral": {
        "score": "The score given to people without one (e.g. the population median).",
        "reason": "Why this value.",
    },
    "Rule": {
        "id": "Short unique name of the rule; denials and audit records name it.",
        "reason": "Why the rule exists, in plain words.",
        "source": "The law or terms clause, with a link.",
        "when": "Conditions; all given must hold. Leave out to apply to every lookup.",
        "action": "deny, neutralize, redact (needs fields), coarsen, or limit (needs limit).",
        "fields": "For redact: what to remove, by meaning (score_trend, score_class, "
        "reach: every place the API carries it) or as dotted paths.",
        "limit": "For limit: calls per second and/or per day.",
    },
    "When": {
        "client": "Client id(s).",
        "client_kind": "Client kind(s), e.g. hr.",
        "purpose": "Purpose(s); each covers the purposes under it.",
        "upstream": "Upstream name(s).",
        "route": "Route template(s) or glob(s), e.g. /v2/user.json/* ('*' is one "
        "path segment, '**' any number).",
        "outcome": "What the upstream said: found, missing, pending, throttled, error, "
        "objected. Rules without it apply whatever the outcome.",
        "attributes": "Request attributes that must all be present with these values.",
    },
    "Limit": {
        "per": "Count calls per client (each system its own budget) or per upstream "
        "(all systems together).",
        "calls_per_second": "Most calls per second.",
        "calls_per_day": "Most calls per day.",
    },
    "AuditSettings": {
        "retention": "How long lookup records are kept whole, e.g. 400d. Older ones are "
        "pruned (hashes kept, so the log still verifies). Leave out to keep them forever.",
    },
    "Settings": {
        "reveal_neutralized": "Whether callers may learn an answer was neutral. Keep false.",
        "default_decision": "What happens to lookups the policy cannot judge: deny.",
        "tests": "Directories of YAML test cases, relative to this file. A changed file "
        "goes live only if all of them pass.",
        "require_tests": "When true (the default), a file whose test cases fail, or that "
        "names none, never goes live; the previous policy stays in force.",
        "people_inside_answers": "An objected person inside someone else's answer: "
        "leave_out (counts kept consistent) or neutralize in place.",
    },
    "GenericPeople": {
        "list": "Dotted path of the list of entries, one per person (Kred: data).",
        "identifier": "Field of an entry holding the identifier asked (Kred: name).",
        "neutral_entry": "A real entry's fields in order, with {score} and {subject}.",
    },
}


def policy_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the policy file, with descriptions."""
    schema: dict[str, Any] = msgspec.json.schema(Policy)
    _clean_descriptions(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Score gateway policy (policies.yaml)"
    defs: dict[str, Any] = schema.get("$defs", {})
    for name, fields in _HELP.items():
        props = defs.get(name, {}).get("properties", {})
        for field_name, text in fields.items():
            if field_name in props:
                props[field_name]["description"] = text
    purpose = {"type": "string", "pattern": _PURPOSE}
    defs["Policy"]["properties"]["purposes"]["propertyNames"] = {"pattern": _PURPOSE}
    defs["Client"]["properties"]["purposes"]["items"] = purpose
    defs["Terms"]["properties"]["banned_purposes"]["items"] = purpose
    for duration in (
        defs["Terms"]["properties"]["max_cache_age"],
        defs["AuditSettings"]["properties"]["retention"],
    ):
        for option in duration.get("anyOf", []):
            if option.get("type") == "string":
                option["pattern"] = _DURATION
    return schema


def _clean_descriptions(node: Any) -> None:
    """Dedent descriptions taken from docstrings, in place.

    msgspec copies class docstrings into ``description``; whether it dedents them
    changed between releases (0.19 did, 0.23 does not). ``inspect.cleandoc`` makes
    the schema text the same under either, so the checked-in file does not depend
    on an incidental detail of a dependency.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = inspect.cleandoc(value)
            else:
                _clean_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _clean_descriptions(item)


def schema_json() -> str:
    """The schema as stable, indented JSON text (what ``gateway policy schema`` prints)."""
    return json.dumps(policy_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
