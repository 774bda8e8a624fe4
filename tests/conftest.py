"""Shared fixtures: the real gateway and simulator on loopback, real files in tmp_path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import RunningGateway, running_gateway


@pytest.fixture(autouse=True)
def _quiet_http_client_logs() -> None:
    # httpx logs every request at INFO; tests read responses, not logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path / "var") as running:
        yield running


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        yield c
