"""Small policies for tests: a valid base to edit, and the shipped file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.loader import parse_policy
from gateway.policies.model import LookupContext

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies.yaml"
SHIPPED_CASES = ROOT / "policy-tests"

# Line numbers in the loader tests refer to this text: keep it as is.
MINIMAL = """\
purposes:
  sales: Selling.
  employment: HR.
  employment.recruitment: Hiring.
clients:
  - id: crm
    kind: crm
    purposes: [sales]
upstreams:
  - name: klout
    adapter: klout
    base_url: http://api.klout.com
    neutral: {score: 40}
rules:
  - id: deny-employment
    reason: No hiring.
    source: FCRA
    when: {purpose: employment}
    action: deny
"""


def compiled(text: str = MINIMAL) -> CompiledPolicy:
    return compile_policy(parse_policy(text))


def context(**overrides: Any) -> LookupContext:
    """A lookup by the CRM for sales on Klout, with ``overrides``."""
    fields: dict[str, Any] = {
        "client": "crm",
        "client_kind": "crm",
        "purpose": "sales",
        "upstream": "klout",
        "route": "/v2/user.json/{kloutId}/score",
    }
    fields.update(overrides)
    return LookupContext(**fields)
