"""Objections for end-to-end tests: a copy of the shipped policy that lists them.

Until objections live in the store (issue 9, branch people-core), the policy's
``objections`` list is where the gateway reads them; this is the one place the
tests write them, so moving them to the store changes only this file.
"""

from __future__ import annotations

from pathlib import Path

from gateway.audit.pseudonym import Pseudonymizer
from gateway.demo.upstream import DemoUpstreamConfig
from tests.support.gateway import SHIPPED_POLICY

# Every identifier the simulator knows for bob (screen name, Twitter, kloutId, Instagram).
BOB = [
    ("twitter_screen_name", "bob_example"),
    ("twitter_id", "1002"),
    ("klout_id", "5002"),
    ("instagram_id", "3002"),
]


# The shipped policy with the vendor's rate lifted (tests that send many lookups in
# a second; the simulator must be configured to match).
NO_RATE_LIMIT = {
    "      calls_per_second: 10\n": "      calls_per_second: 100000\n",
    "      calls_per_second: 9\n": "      calls_per_second: 100000\n",
}
FAST_VENDOR = DemoUpstreamConfig(calls_per_second=100000)


def policy_with_objections(
    path: Path,
    data_dir: Path,
    subjects: list[tuple[str, str]],
    *,
    source: Path = SHIPPED_POLICY,
    replace: dict[str, str] | None = None,
) -> Path:
    """Write a policy at ``path`` objecting to ``subjects`` (namespace, identifier),
    pseudonymized with the key in ``data_dir`` (created if needed)."""
    pseudonyms = Pseudonymizer.load_or_create(data_dir)
    entries = "".join(f"\n  - {pseudonyms.pseudonym(ns, ident)}" for ns, ident in subjects)
    text = source.read_text()
    assert "\nobjections: []" in text
    text = text.replace(
        "\nobjections: []", "\nobjections:" + entries if entries else "\nobjections: []"
    )
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path
