"""Tests for gateway/policies/schema.py: the editor schema is current and describes fields."""

from __future__ import annotations

from gateway.policies.schema import SCHEMA_FILE, policy_schema, schema_json
from tests.policies.samples import SHIPPED


def test_schema_file_is_current() -> None:
    """The checked-in schema equals what ``gateway policy schema`` prints.

    Regenerate with: gateway policy schema > gateway/policies/policy.schema.json
    """
    assert SCHEMA_FILE.read_text() == schema_json()


def test_every_field_has_a_description() -> None:
    """Every property of every policy type carries a plain-words description."""
    defs = policy_schema()["$defs"]
    for name, definition in defs.items():
        if name in ("GenericAdapter",):
            continue
        for field, spec in definition.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field}"


def test_shipped_policy_points_editors_to_the_schema() -> None:
    """The shipped file's first line is the yaml-language-server modeline."""
    first = SHIPPED.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=gateway/policies/policy.schema.json"
