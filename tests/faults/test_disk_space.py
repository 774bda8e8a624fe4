"""A filling disk: /readyz and a metric say so well before the audit store is full.

The watermark is set above the real free space of the test's filesystem, which is
what a nearly full disk looks like to the gateway; no file is grown to fill it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from tests.faults.support import ADMIN
from tests.support.gateway import limits, running_gateway


def test_free_space_under_the_watermark_turns_readyz_503_and_raises_the_metric(
    tmp_path: Path,
) -> None:
    data = tmp_path / "var"
    data.mkdir()
    above_free = shutil.disk_usage(data).free + 2**40
    with running_gateway(data, limits=limits(min_free_disk=above_free)) as gw:
        ready = httpx.get(gw.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        body = ready.json()
        assert body["disk"] is False
        assert body["audit"] is True
        assert "watermark" in body["reasons"][0]
        metrics = httpx.get(gw.url + "/metrics", headers=ADMIN, timeout=5).text
        assert "gateway_data_dir_low_space 1.0" in metrics
        # Lookups still work: the store is not full yet, only the warning is up.
        r = httpx.get(gw.url + "/klout/v2/user.json/5001/score", params={"key": "demo-crm-key"})
        assert r.status_code == 200


def test_enough_free_space_keeps_readyz_200_and_the_metric_0(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "var", limits=limits(min_free_disk=1)) as gw:
        ready = httpx.get(gw.url + "/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["reasons"] == []
        metrics = httpx.get(gw.url + "/metrics", headers=ADMIN, timeout=5).text
        assert "gateway_data_dir_low_space 0.0" in metrics
        free = next(
            line for line in metrics.splitlines() if line.startswith("gateway_data_dir_free_bytes")
        )
        assert float(free.split()[1]) > 0
