"""Fixtures for the audit tests: a real SQLite file per test, a real PostgreSQL schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore

PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


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
def pg_schema() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards."""
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001  # any connection failure means "no server here"
        engine.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} is not usable: {exc.__class__.__name__}")
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def pg_store(pg_schema: str) -> Iterator[AuditStore]:
    s = AuditStore.open(url=PG_URL, schema=pg_schema)
    yield s
    s.close()
