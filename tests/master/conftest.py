"""Fixtures for the store tests: each runs against SQLite and against a real
PostgreSQL server (tests/pgserver.py), one fresh, empty database per test."""

from __future__ import annotations

import pytest

from safcm.master.db import open_db, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def conn(request, tmp_path):
    """A migrated, empty master database of each kind."""
    if request.param == "sqlite":
        db = open_db(str(tmp_path))
    else:
        db = open_store(str(tmp_path), request.getfixturevalue("pg_dsn"))
    yield db
    db.close()


@pytest.fixture
def sqlite_conn(tmp_path):
    """The SQLite database alone, for what only it has (its file, its old rows)."""
    db = open_db(str(tmp_path))
    yield db
    db.close()
