"""Build the adapter an upstream entry names."""

from __future__ import annotations

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
