"""Fixtures shared by every kind of test: a real PostgreSQL server."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests.pgserver import PgServer


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session. It is not skipped when missing:
    scripts/test.sh installs Debian's postgresql package, so a missing server
    is a broken test machine, and says so."""
    server = PgServer.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def pg_dsn(pg_server):
    """The DSN of an empty database: the schema is dropped before each test."""
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute("DROP SCHEMA public CASCADE")
        admin.execute("CREATE SCHEMA public")
    return pg_server.dsn
