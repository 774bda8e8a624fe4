"""Start the real gateway (and the real simulator) on loopback for a test."""

from __future__ import annotations

import contextlib
import shutil
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
SHIPPED_CASES = REPO / "policy-tests"


def with_shipped_cases(policy: Path) -> Path:
    """``policy``, with the shipped test cases beside it if nothing is there yet.

    Tests write edited copies of the shipped policy into a temporary directory; the
    copy names ``policy-tests/`` beside it and would not go live without them
    (require_tests), as an operator copies both."""
    cases = policy.parent / SHIPPED_CASES.name
    if policy.resolve() != SHIPPED_POLICY.resolve() and not cases.exists():
        shutil.copytree(SHIPPED_CASES, cases)
    return policy


def copy_shipped_policy(directory: Path, text: str | None = None) -> Path:
    """The shipped policy (or ``text``) in ``directory``, with the test cases it names
    beside it, as a running gateway needs them to put it live (require_tests)."""
    path = directory / "policies.yaml"
    path.write_text(SHIPPED_POLICY.read_text() if text is None else text)
    return with_shipped_cases(path)


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
    exactly what reached the upstream (``upstream.received``).

    The shipped cases go beside a copy of the shipped policy (:func:`with_shipped_cases`)."""
    with_shipped_cases(policies)
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
