"""Deployment settings: every limit and timeout, from flags or ``GATEWAY_*`` variables.

Policy (what may be looked up, by whom, for what) lives in ``policies.yaml`` and
belongs to compliance staff; these settings (where to listen, where data lives,
how long to wait) belong to operators.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

ENV_PREFIX = "GATEWAY_"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes and times that bound every request (reliability.md catalogue 1 and 2)."""

    max_request_body: int = 64 * 1024
    max_response_body: int = 1024 * 1024
    max_url_length: int = 8 * 1024
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    total_timeout: float = 8.0
    max_retry_after: int = 60
    # Answers that never reach the vendor (objected people, gateway-issued ids,
    # cache hits) wait as long as a vendor-bound answer of the same route took,
    # drawn from recent ones; this is the guess used before any were measured.
    local_answer_delay: float = 0.02
    # Off only to measure what timing parity is worth (bench/, the KS test's
    # negative control): local answers then wait local_answer_delay +-25%.
    timing_parity: bool = True
    upstream_connections: int = 100
    # How long a lookup waits for a free upstream connection before 503 upstream.busy.
    pool_timeout: float = 0.25


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    demo: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("var")
    policies: Path = Path("policies.yaml")
    database_url: str | None = None
    redis_url: str | None = None
    # name -> base URL overrides of policy upstreams (``--upstream NAME=URL``).
    upstream_overrides: dict[str, str] = {}
    # Port of the bundled simulator in demo mode (0: pick a free one).
    demo_upstream_port: int = 0
    workers: int = 1
    # Who commits audit records: "thread" (a writer thread in this process),
    # "process" (one sequencer process for every worker), or "auto" (process when
    # workers > 1). gateway/audit/sequencer.py says why.
    audit_sequencer: str = "auto"
    # Set by `serve` for its workers: the socket of the running sequencer.
    sequencer_socket: Path | None = None
    otlp_endpoint: str | None = None
    log_level: str = "info"
    policy_reload_interval: float = 1.0
    admin_token_hashes: tuple[str, ...] = ()
    # Upstream answers kept for reuse (0: no cache). Never older than the upstream's
    # terms.max_cache_age nor cache_max_age, whichever is shorter.
    cache_entries: int = 0
    cache_max_age: float = 86400.0
    limits: Limits = Limits()


def parse_upstream_overrides(values: list[str]) -> dict[str, str]:
    """``NAME=URL`` pairs; the URL must be http(s) with a host."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"--upstream expects NAME=http(s)://HOST[:PORT], got {value!r}")
        out[name] = url
    return out


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Settings given as ``GATEWAY_*`` environment variables, as flag defaults."""
    env = os.environ if environ is None else environ
    out: dict[str, object] = {}
    mapping = {
        "HOST": "host",
        "PORT": "port",
        "DATA_DIR": "data_dir",
        "POLICIES": "policies",
        "DATABASE_URL": "database_url",
        "REDIS_URL": "redis_url",
        "OTLP_ENDPOINT": "otlp_endpoint",
        "LOG_LEVEL": "log_level",
        "WORKERS": "workers",
        "AUDIT_SEQUENCER": "audit_sequencer",
        "CACHE_ENTRIES": "cache_entries",
        "CACHE_MAX_AGE": "cache_max_age",
    }
    for suffix, field in mapping.items():
        if (value := env.get(ENV_PREFIX + suffix)) is not None:
            out[field] = value
    if env.get(ENV_PREFIX + "DEMO", "").lower() in {"1", "true", "yes", "on"}:
        out["demo"] = True
    if upstreams := env.get(ENV_PREFIX + "UPSTREAMS"):
        out["upstream"] = [u.strip() for u in upstreams.split(",") if u.strip()]
    return out
