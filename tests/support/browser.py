"""Headless Chromium (Debian's ``chromium`` package) for tests that need a real browser.

Locally a test skips when Chromium is absent; under ``CI=true`` it fails instead
(``.ci/run`` installs the package when it is missing). Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The Chromium binary, or skip (fail under CI=true) when there is none."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is required under CI=true: apt-get install -y chromium")
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


def dump_dom(url: str, profile: Path, *, size: str = "1200,2400") -> str:
    """The DOM after the page's scripts ran."""
    result = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
         "--virtual-time-budget=2000", "--dump-dom", url],
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    return result.stdout.decode()


def screenshot(url: str, profile: Path, out: Path, *, size: str = "1200,2400") -> Path:
    """A PNG of the page, kept under build/test-artifacts/."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
         f"--screenshot={out}", url],
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    return out
