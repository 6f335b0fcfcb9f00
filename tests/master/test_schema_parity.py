"""The PostgreSQL schema (master/pgdb.py PG_MIGRATIONS) restates SQLite's
(master/db.py): a migration written for one store and not the other must
fail here, not at a user's first query on the other store."""

from __future__ import annotations

from typing import Any

import psycopg

from safcm.master.db import open_db, open_store

PG_VERSION_TABLE = "safcm_schema"


def _sqlite_schema(db: Any) -> tuple[dict[str, set[str]], set[str]]:
    tables = {
        row["name"]: {c["name"] for c in db.execute(f"PRAGMA table_info({row['name']})")}
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    indexes = {
        row["name"]
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    return tables, indexes


def _pg_schema(dsn: str) -> tuple[dict[str, set[str]], set[str]]:
    with psycopg.connect(dsn) as conn:
        tables: dict[str, set[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        ):
            tables.setdefault(table, set()).add(column)
        # Indexes made by CREATE INDEX, not those behind a primary key or
        # UNIQUE constraint (SQLite lists those without SQL, left out above).
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes i WHERE schemaname = 'public' AND NOT EXISTS"
                " (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
            )
        }
    return tables, indexes


def test_both_stores_have_the_same_tables_columns_and_indexes(tmp_path, pg_dsn):
    sqlite = open_db(str(tmp_path))
    pg = open_store(str(tmp_path), pg_dsn)
    try:
        lite_tables, lite_indexes = _sqlite_schema(sqlite)
        pg_tables, pg_indexes = _pg_schema(pg_dsn)
    finally:
        sqlite.close()
        pg.close()
    assert lite_tables, "no tables read from SQLite"
    # PostgreSQL keeps the schema's version in a table; SQLite in PRAGMA user_version.
    del pg_tables[PG_VERSION_TABLE]
    for name in sorted(lite_tables.keys() | pg_tables.keys()):
        assert name in lite_tables, f"table {name} only in PostgreSQL"
        assert name in pg_tables, f"table {name} only in SQLite"
        assert lite_tables[name] == pg_tables[name], f"table {name}: columns differ"
    assert lite_indexes == pg_indexes
