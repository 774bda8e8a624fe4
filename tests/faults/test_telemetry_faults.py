"""The trace collector down or stalled: spans may be lost, lookups never (catalogue (2) #20)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.demo.upstream import DemoUpstreamConfig
from tests.faults.support import ALICE_SCORE, CRM, SCORE_PATH, roomy_policy
from tests.support.gateway import running_gateway
from tests.support.servers import free_port

LOOKUPS = 260  # two spans each: the 512-span export batch fills and is sent mid-run


@pytest.fixture(params=["refused", "stalled"])
def collector(request: pytest.FixtureRequest) -> Iterator[str]:
    """An OTLP endpoint nobody answers: a closed port, or a listener that never reads."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}/v1/traces"
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # connections complete in the backlog; nothing is ever read
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"


def test_lookups_stay_fast_when_the_collector_is_unreachable(
    tmp_path: Path, collector: str
) -> None:
    with (
        running_gateway(
            tmp_path / "var",
            upstream_config=DemoUpstreamConfig(calls_per_second=1e6, calls_per_day=10**9),
            policies=roomy_policy(tmp_path),
            otlp_endpoint=collector,
        ) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as client,
    ):
        runtime = gw.state.runtime
        assert runtime is not None
        assert runtime.tracing
        latencies = []
        for _ in range(LOOKUPS):
            started = time.monotonic()
            r = client.get(SCORE_PATH, params=CRM)
            latencies.append(time.monotonic() - started)
            assert r.status_code == 200
            assert ALICE_SCORE in r.text
    latencies.sort()
    # A lookup that waited for the exporter would take its 2 s export timeout. The
    # bounds stay well below that but far above a busy 2-core machine's jitter: this
    # test is about blocking, not speed (speed is measured in bench/).
    assert latencies[int(LOOKUPS * 0.99)] < 1.0, latencies[-5:]
    assert latencies[-1] < 1.5, latencies[-5:]
