"""Fixtures for the audit tests: a real SQLite file per test, a real PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from tests.support.postgres import PG_URL, pg_schema

__all__ = ["PG_URL", "pg_schema"]  # the fixture, shared with other test packages


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def keyring(data_dir: Path) -> KeyRing:
    return KeyRing.load_or_create(data_dir)


@pytest.fixture
def store(data_dir: Path) -> Iterator[AuditStore]:
    s = AuditStore.open(data_dir=data_dir)
    yield s
    s.close()


@pytest.fixture
def pg_store(pg_schema: str) -> Iterator[AuditStore]:
    s = AuditStore.open(url=PG_URL, schema=pg_schema)
    yield s
    s.close()
