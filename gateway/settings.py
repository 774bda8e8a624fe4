"""Deployment settings: every limit and timeout, from flags or ``GATEWAY_*`` variables.

Every command reads them through :func:`resolve`, in one order: a flag given on the
command line, else its ``GATEWAY_*`` environment variable, else the default written
here, in :class:`Settings`, and nowhere else.

Policy (what may be looked up, by whom, for what) lives in ``policies.yaml`` and
belongs to compliance staff; these settings (where to listen, where data lives,
how long to wait) belong to operators.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
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
    # Free space the data directory's filesystem must keep: below it /readyz says 503
    # and gateway_data_dir_low_space is 1, long before a full disk fails every lookup.
    min_free_disk: int = 1024**3
    # Open connections one peer address may hold, and all peers together; past
    # them new work gets a problem+json 503 (health endpoints excepted).
    max_connections_per_source: int = 256
    max_connections: int = 2048
    # Seconds a response may wait on a reader that takes nothing before the
    # connection is cut (slow or stalled export readers).
    write_timeout: float = 10.0
    # Audit exports streaming at once (each holds a thread and a chunk of rows).
    max_exports: int = 4


class RefusalLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Requests refused before a client is identified (gateway/refusals.py): a source
    may be refused ``per_second`` times a second, ``burst`` at once; their records are
    aggregates of at most ``max_ids`` request ids, written every ``interval`` seconds."""

    per_second: float = 20.0
    burst: float = 100.0
    interval: float = 10.0
    max_ids: int = 512


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
    # "process" (one sequencer process for every worker), or "auto" (process, for
    # one worker too). gateway/audit/sequencer.py says why.
    audit_sequencer: str = "auto"
    # Set by `serve` for its workers: the socket of the running sequencer.
    sequencer_socket: Path | None = None
    otlp_endpoint: str | None = None
    log_level: str = "info"
    policy_reload_interval: float = 1.0
    admin_token_hashes: tuple[str, ...] = ()
    # The pseudonym secret, the same for every replica (else GATEWAY_PSEUDONYM_SECRET,
    # else the data directory's generated key).
    pseudonym_secret_file: Path | None = None
    # Upstream answers kept for reuse (0: no cache). Never older than the upstream's
    # terms.max_cache_age nor cache_max_age, whichever is shorter.
    cache_entries: int = 0
    cache_max_age: float = 86400.0
    # C2SP tlog-witnesses to push checkpoints to, as ``URL=VKEYFILE`` (``--witness``).
    witnesses: tuple[str, ...] = ()
    limits: Limits = Limits()
    refusals: RefusalLimits = RefusalLimits()


class SettingsError(ValueError):
    """A setting that cannot be used; the message names where it came from."""


def parse_upstream_overrides(values: list[str], *, origin: str = "--upstream") -> dict[str, str]:
    """``NAME=URL`` pairs; the URL must be http(s) with a host."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise SettingsError(f"{origin} expects NAME=http(s)://HOST[:PORT], got {value!r}")
        out[name] = url
    return out


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _witness_list(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _sequencer_mode(text: str) -> str:
    if text not in ("auto", "thread", "process"):
        raise ValueError("expected auto, thread or process")
    return text


#: ``GATEWAY_<NAME>`` -> (settings field, how to read the text).
ENVIRONMENT: dict[str, tuple[str, Callable[[str], object]]] = {
    "DEMO": ("demo", _boolean),
    "HOST": ("host", str),
    "PORT": ("port", int),
    "DATA_DIR": ("data_dir", Path),
    "POLICIES": ("policies", Path),
    "DATABASE_URL": ("database_url", str),
    "REDIS_URL": ("redis_url", str),
    "OTLP_ENDPOINT": ("otlp_endpoint", str),
    "LOG_LEVEL": ("log_level", str),
    "WORKERS": ("workers", int),
    "AUDIT_SEQUENCER": ("audit_sequencer", _sequencer_mode),
    "CACHE_ENTRIES": ("cache_entries", int),
    "CACHE_MAX_AGE": ("cache_max_age", float),
    "DEMO_UPSTREAM_PORT": ("demo_upstream_port", int),
    "PSEUDONYM_SECRET_FILE": ("pseudonym_secret_file", Path),
    "WITNESSES": ("witnesses", _witness_list),
}


def resolve(
    flags: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings every command runs with, from one place: a flag given on the command
    line, else its ``GATEWAY_*`` variable, else the default written in :class:`Settings`.

    ``flags`` maps field names to values, ``None`` meaning "not given" (argparse's
    namespace as a dict will do: unknown names are ignored). ``--upstream NAME=URL``
    flags (``upstream_override``, a list) are added to ``GATEWAY_UPSTREAMS`` and win
    for the same name.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for suffix, (name, read) in ENVIRONMENT.items():
        text = env.get(ENV_PREFIX + suffix)
        if text is None:
            continue
        try:
            values[name] = read(text)
        except ValueError as exc:
            raise SettingsError(
                f"{ENV_PREFIX}{suffix}={text[:80]!r} cannot be used: {exc}"
            ) from None
    overrides: dict[str, str] = {}
    if upstreams := env.get(ENV_PREFIX + "UPSTREAMS"):
        overrides.update(
            parse_upstream_overrides(
                [u.strip() for u in upstreams.split(",") if u.strip()],
                origin=f"{ENV_PREFIX}UPSTREAMS",
            )
        )
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name == "upstream_override":
            overrides.update(parse_upstream_overrides(list(value)))  # type: ignore[call-overload]
        elif name == "witnesses":
            values[name] = tuple(value)  # type: ignore[arg-type]
        elif name in fields:
            values[name] = value
    if overrides:
        values["upstream_overrides"] = overrides
    return Settings(**values)  # type: ignore[arg-type]
