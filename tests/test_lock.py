"""``requirements.txt`` is the lock a fresh clone installs (``make demo`` and ``make
test`` run ``pip install --require-hashes -r requirements.txt``): every package in it is
pinned to one version with its hashes, every dependency the project declares is in it
at a version the declaration allows, and the suite runs on exactly those versions."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, tuple[str, list[str]]]:
    """Package name -> (pinned version, its hashes), from the lock's entries."""
    out: dict[str, tuple[str, list[str]]] = {}
    for entry in (ROOT / "requirements.txt").read_text().replace("\\\n", " ").splitlines():
        tokens = entry.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        name, pinned, found = tokens[0].partition("==")
        assert pinned, f"not pinned to one version: {entry.strip()}"
        hashes = [t.removeprefix("--hash=") for t in tokens[1:] if t.startswith("--hash=")]
        out[canonicalize_name(name)] = (found, hashes)
    return out


def _declared(*, tools: bool = True) -> list[Requirement]:
    """The project's dependencies and dev extra, and (``tools``) the installer tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    if tools:
        text = (ROOT / "requirements" / "tools.in").read_text().splitlines()
        lines += [line.split("#")[0].strip() for line in text if line.split("#")[0].strip()]
    return [Requirement(line) for line in lines]


def test_every_locked_package_is_pinned_with_sha256_hashes() -> None:
    locked = _locked()
    assert len(locked) > 50  # the whole tree, not only the direct dependencies
    for name, (_, hashes) in locked.items():
        assert hashes, f"{name} has no hash: pip --require-hashes would refuse the lock"
        assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in hashes), name


def test_every_declared_dependency_is_locked_at_an_allowed_version() -> None:
    locked = _locked()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is declared but not in the lock (make upgrade)"
        pinned = locked[name][0]
        assert requirement.specifier.contains(pinned, prereleases=True), (
            f"the lock pins {name}=={pinned}, outside {requirement}"
        )


def test_the_suite_runs_on_the_locked_versions() -> None:
    locked = _locked()
    for requirement in _declared(tools=False):  # pip may be upgraded in a venv; not these
        name = canonicalize_name(requirement.name)
        assert version(name) == locked[name][0], f"{name} installed is not the locked version"
