"""The real gateway under uvicorn with the production server options, shared per module.

Hostile-input cases do not change gateway state that other cases read, so one
gateway (about 0.5 s to start) serves a whole module. Two things differ from
``tests.support.gateway.running_gateway``:

* uvicorn gets the options ``gateway serve`` uses (:data:`PRODUCTION_SERVER`);
* the Klout rate limits (vendor terms and the simulator's own) are raised, so
  that the dozen allowed lookups in the corpus are not turned into 429s by the
  order the cases happen to run in. Rate limiting is not what these tests test.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.demo.upstream import DemoUpstreamConfig, create_demo_upstream
from gateway.server import uvicorn_options
from gateway.settings import Limits, Settings
from tests.support.gateway import SHIPPED_POLICY, RunningGateway, with_shipped_cases
from tests.support.servers import serve_asgi

#: The uvicorn options production runs with (``gateway serve`` uses the same function),
#: including the connection guards of ``gateway.server.GuardedHttpToolsProtocol``.
PRODUCTION_SERVER: dict[str, Any] = uvicorn_options(log_level="warning")

#: Loggers whose records a case may produce (uvicorn and Litestar do not propagate).
WATCHED_LOGGERS = ("", "uvicorn", "litestar")


class LogRecorder(logging.Handler):
    """Keeps every record at WARNING or above emitted while the gateway runs."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def unthrottled_policy(directory: Path) -> Path:
    """The shipped policy with every Klout rate and daily limit raised."""
    text = SHIPPED_POLICY.read_text(encoding="utf-8")
    text, per_second = re.subn(r"calls_per_second: [0-9.]+", "calls_per_second: 100000", text)
    text, per_day = re.subn(r"calls_per_day: [0-9]+", "calls_per_day: 100000000", text)
    assert per_second, "policies.yaml no longer declares Klout rate limits this way"
    assert per_day, "policies.yaml no longer declares Klout daily limits this way"
    path = directory / "policies.yaml"
    path.write_text(text, encoding="utf-8")
    return with_shipped_cases(path)


@contextlib.contextmanager
def production_gateway(
    data_dir: Path, *, upstream_config: DemoUpstreamConfig | None = None
) -> Iterator[RunningGateway]:
    """The demo gateway and its simulator, the gateway served like ``gateway serve``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    upstream = create_demo_upstream(
        upstream_config
        or DemoUpstreamConfig(
            calls_per_second=100_000.0, calls_per_day=100_000_000, received_log_size=100_000
        )
    )
    with serve_asgi(upstream) as upstream_url:
        settings = Settings(
            demo=True,
            data_dir=data_dir,
            policies=unthrottled_policy(data_dir),
            upstream_overrides={"klout": upstream_url},
            limits=Limits(local_answer_delay=0.005),
            policy_reload_interval=0.1,
        )
        app = create_app(settings)
        with serve_asgi(app, **PRODUCTION_SERVER) as url:
            yield RunningGateway(
                url=url,
                state=app.state["gateway"],
                upstream=upstream,
                upstream_url=upstream_url,
                data_dir=data_dir,
            )


@pytest.fixture(scope="module")
def hostile_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with production_gateway(tmp_path_factory.mktemp("hostile")) as running:
        yield running


@pytest.fixture(scope="module")
def redirecting_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The simulator answers every call with ``302 Location: http://169.254.169.254/...``."""
    config = DemoUpstreamConfig(fault="redirect", received_log_size=100_000)
    with production_gateway(tmp_path_factory.mktemp("redirect"), upstream_config=config) as gw:
        yield gw


@pytest.fixture
def gateway_logs() -> Iterator[LogRecorder]:
    """Records WARNING+ from the gateway's loggers during one test.

    Function-scoped on purpose: every uvicorn start re-runs ``dictConfig``, which
    drops handlers from the ``uvicorn`` logger, so this is attached after the
    (module-scoped) servers have started.
    """
    recorder = LogRecorder()
    loggers = [logging.getLogger(name) for name in WATCHED_LOGGERS]
    for logger in loggers:
        logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        for logger in loggers:
            logger.removeHandler(recorder)
