"""Build the adapter an upstream entry names."""

from __future__ import annotations

from gateway.audit.pseudonym import Pseudonymizer
from gateway.policies.model import Upstream
from gateway.upstreams.base import Adapter
from gateway.upstreams.generic import GenericAdapter
from gateway.upstreams.klout import KloutAdapter

ADAPTERS = ("klout", "generic")


def build_adapter(upstream: Upstream, id_key: bytes) -> Adapter:
    """``id_key`` keys identifiers the gateway issues (neutral kloutIds)."""
    if upstream.adapter == "klout":
        return KloutAdapter(upstream.name, id_key)
    if upstream.adapter == "generic":
        if upstream.generic is None:
            raise ValueError(
                f"upstream {upstream.name!r}: the generic adapter needs a generic: block"
            )
        return GenericAdapter(upstream.name, upstream.generic)
    raise ValueError(f"upstream {upstream.name!r}: unknown adapter {upstream.adapter!r}")


def subject_pseudonyms(upstream: Upstream, pseudonyms: Pseudonymizer, identifier: str) -> list[str]:
    """Every pseudonym ``identifier`` may carry at ``upstream`` (one per namespace the
    API uses: a Klout number may be a Twitter, Google+, Instagram or Klout id)."""
    adapter = build_adapter(upstream, bytes(32))  # the id key plays no part here
    return [
        pseudonyms.pseudonym(s.namespace, s.identifier) for s in adapter.subjects_for(identifier)
    ]
