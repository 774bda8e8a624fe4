"""Start the real gateway (and the real simulator) on loopback for a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from gateway.app import GatewayState, create_app
from gateway.demo.upstream import DemoUpstream, DemoUpstreamConfig, create_demo_upstream
from gateway.settings import Limits, Settings
from tests.support.servers import serve_asgi

REPO = Path(__file__).resolve().parents[2]
SHIPPED_POLICY = REPO / "policies.yaml"


@dataclass
class RunningGateway:
    url: str
    state: GatewayState
    upstream: DemoUpstream
    upstream_url: str
    data_dir: Path


@contextlib.contextmanager
def running_gateway(
    data_dir: Path,
    *,
    upstream_config: DemoUpstreamConfig | None = None,
    policies: Path = SHIPPED_POLICY,
    limits: Limits | None = None,
    **settings: Any,
) -> Iterator[RunningGateway]:
    """The demo gateway with the simulator in its own server, so tests can see
    exactly what reached the upstream (``upstream.received``)."""
    upstream = create_demo_upstream(upstream_config)
    with serve_asgi(upstream) as upstream_url:
        config = Settings(
            demo=True,
            data_dir=data_dir,
            policies=policies,
            upstream_overrides={"klout": upstream_url},
            limits=limits or Limits(local_answer_delay=0.005),
            policy_reload_interval=0.1,
            **settings,
        )
        app = create_app(config)
        with serve_asgi(app) as url:
            yield RunningGateway(
                url=url,
                state=app.state["gateway"],
                upstream=upstream,
                upstream_url=upstream_url,
                data_dir=data_dir,
            )


def limits(**changes: Any) -> Limits:
    return msgspec.structs.replace(Limits(local_answer_delay=0.005), **changes)
