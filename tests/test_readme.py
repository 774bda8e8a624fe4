"""The README stands alone: a newcomer has only the repository."""

from __future__ import annotations

import re

import pytest

from tests.support.gateway import REPO

README = (REPO / "README.md").read_text()


@pytest.mark.parametrize(
    "outside",
    [
        pytest.param("../", id="parent-directory"),
        pytest.param("reference/", id="reference-notes"),
        pytest.param("shared/", id="shared-notes"),
        pytest.param("tests/cases", id="old-case-directory"),
    ],
)
def test_the_readme_points_nowhere_outside_the_repository(outside: str) -> None:
    assert outside not in README


def test_every_path_the_readme_names_exists() -> None:
    """Backquoted repository paths in the README are real files or directories."""
    paths = set(
        re.findall(r"`((?:gateway|tests|bench|requirements|policy-tests|docs)/[\w./-]*)`", README)
    )
    assert paths
    missing = sorted(p for p in paths if not (REPO / p.rstrip("/")).exists() and "*" not in p)
    assert not missing
