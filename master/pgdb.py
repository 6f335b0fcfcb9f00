"""The master's database in PostgreSQL (psycopg 3), for `store: postgresql://...`.

Several masters that share one database form a cluster (DESIGN section 10).
The stores' SQL is written once, with `?` placeholders (master/db.py); this
module turns them into psycopg's `%s`, and maps every psycopg error to
StoreError.

The connection string is libpq's (a URI or `key=value` words). The password
never needs to be in it: libpq reads PGPASSWORD, or a password file
(PGPASSFILE, `passfile=` in the string, or ~/.pgpass), so it can stay out of
master.yaml and off every command line. Messages show the string without
any password it has.

Schema versions live in the table safcm_schema. Masters starting together
migrate one at a time: each takes a transaction-scoped advisory lock first,
then reads the version again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg.rows import RowMaker

from safcm.common.errors import StoreError
from safcm.master.db import Rows, statements

# Seconds to wait for the server to accept a connection: a master starting
# while the database is down fails its start with a clear error rather than
# hanging; systemd restarts it.
CONNECT_TIMEOUT_S = 10
# Milliseconds a statement may wait for a row or table lock held by another
# master before failing (the counterpart of SQLite's busy timeout): the loop
# must not stall behind another master's long transaction.
LOCK_TIMEOUT_MS = 2000
# Statements kept adapted (`?` to `%s`), at most: the stores' fixed ones and
# IN lists of the lengths seen.
MAX_ADAPTED = 1000
# The advisory lock that serialises migrations between masters (any fixed
# number; this one spells "safcm" in ASCII).
MIGRATION_LOCK = 0x736166636D

# The schema, in versions as master/db.py's MIGRATIONS. It starts at what the
# SQLite schema had reached when PostgreSQL came (its version 8): there are no
# older PostgreSQL databases to upgrade. Types: DOUBLE PRECISION for times
# (REAL is 4 bytes in PostgreSQL, too coarse for unix times); BYTEA for
# bytes; "user" is quoted (a reserved word).
PG_MIGRATIONS: list[str] = [
    """
    CREATE TABLE minions (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected')),
        sign_pub    BYTEA NOT NULL,
        kx_pub      BYTEA NOT NULL,
        curve_pub   BYTEA,
        fingerprint TEXT NOT NULL,
        first_seen  DOUBLE PRECISION NOT NULL,
        last_seen   DOUBLE PRECISION,
        changed     DOUBLE PRECISION NOT NULL,
        seq         BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX minions_curve ON minions (curve_pub);
    CREATE TABLE refused_keys (
        id          TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        first_seen  DOUBLE PRECISION NOT NULL,
        last_seen   DOUBLE PRECISION NOT NULL,
        sign_pub    BYTEA,
        kx_pub      BYTEA,
        curve_pub   BYTEA,
        PRIMARY KEY (id, fingerprint)
    );
    CREATE TABLE jobs (
        jid        TEXT PRIMARY KEY,
        submitted  DOUBLE PRECISION NOT NULL,
        deadline   DOUBLE PRECISION NOT NULL,
        "user"     TEXT NOT NULL,
        target     TEXT NOT NULL,
        module     TEXT NOT NULL,
        dry_run    INTEGER NOT NULL,
        git_commit TEXT,
        started    INTEGER NOT NULL DEFAULT 1,
        owner      TEXT
    );
    -- A look for a dead master's jobs (master/cluster.py take_over()),
    -- every few seconds, must not read the whole history.
    CREATE INDEX jobs_owner ON jobs (owner);
    CREATE TABLE masters (
        name        TEXT PRIMARY KEY,
        lease_until DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX jobs_target ON jobs (target, jid);
    CREATE TABLE job_hosts (
        jid          TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        host         TEXT NOT NULL,
        state        TEXT NOT NULL
                     CHECK (state IN ('sent', 'received', 'done', 'no_response')),
        status       TEXT CHECK (status IN ('ok', 'changed', 'failed')),
        envelope     BYTEA,
        received     DOUBLE PRECISION,
        returned     DOUBLE PRECISION,
        changes      INTEGER,
        result       BYTEA,
        result_bytes INTEGER,
        plan         TEXT,
        late         INTEGER NOT NULL DEFAULT 0,
        manifest     TEXT,
        include      BYTEA,
        PRIMARY KEY (jid, host)
    );
    CREATE INDEX job_hosts_host ON job_hosts (host, jid);
    CREATE INDEX job_hosts_open ON job_hosts (state) WHERE state IN ('sent', 'received');
    CREATE INDEX job_hosts_outcome ON job_hosts (jid, state, status);
    CREATE TABLE job_plans (
        jid    TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        plan   BYTEA NOT NULL,
        PRIMARY KEY (jid, digest)
    );
    CREATE TABLE job_manifests (
        jid      TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        digest   TEXT NOT NULL,
        manifest BYTEA NOT NULL,
        PRIMARY KEY (jid, digest)
    );
    CREATE TABLE job_content (
        jid    TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        digest BYTEA NOT NULL,
        data   BYTEA NOT NULL,
        PRIMARY KEY (jid, digest)
    );
    CREATE TABLE host_content (
        host TEXT PRIMARY KEY,
        jid  TEXT NOT NULL
    );
    CREATE TABLE facts (
        host     TEXT PRIMARY KEY,
        facts    BYTEA NOT NULL,
        reported DOUBLE PRECISION NOT NULL,
        changed  DOUBLE PRECISION NOT NULL
    );
    """,
]


def redact(conninfo: str) -> str:
    """`conninfo` without its password, for messages."""
    try:
        words = pg_conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "the PostgreSQL store (its connection string does not parse)"
    words.pop("password", None)
    user = f"{words['user']}@" if "user" in words else ""
    port = f":{words['port']}" if "port" in words else ""
    return f"postgresql://{user}{words.get('host', '')}{port}/{words.get('dbname', '')}"


def _row_maker(cursor: psycopg.Cursor[Any]) -> RowMaker[Any]:
    """Rows indexed by position or by column name, as sqlite3.Row."""
    names = [c.name for c in cursor.description or ()]
    index = {name: i for i, name in enumerate(names)}

    def make(values: Sequence[Any]) -> _Row:
        return _Row(values, index)

    return make


class _Row(tuple):
    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> _Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _adapt(sql: str) -> str:
    """The stores' `?` placeholders as psycopg's `%s` (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgDatabase:
    shared = True

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.where = redact(conninfo)
        self.conn = self._connect()
        self._sql: dict[str, str] = {}

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="safcm-master",
                options=f"-c lock_timeout={LOCK_TIMEOUT_MS}",
            )
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to {self.where}: {_reason(e)}") from e
        conn.row_factory = _row_maker
        return conn

    def _ready(self) -> psycopg.Connection[Any]:
        """The connection, opened again if the server closed it (a restart, a
        failover): the operation that found it closed failed, the next one
        connects anew."""
        if self.conn.closed:
            self.conn = self._connect()
        return self.conn

    def _adapted(self, sql: str) -> str:
        adapted = self._sql.get(sql)
        if adapted is None:
            if len(self._sql) >= MAX_ADAPTED:  # IN lists of every length: start again
                self._sql.clear()
            adapted = self._sql[sql] = _adapt(sql)
        return adapted

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        try:
            cur = self._ready().execute(self._adapted(sql), params)
            rows = cur.fetchall() if cur.description is not None else []
            return Rows(rows, cur.rowcount)
        except psycopg.Error as e:
            raise StoreError(f"{self.where}: {_reason(e)}") from e

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        try:
            with self._ready().cursor() as cur:
                cur.executemany(self._adapted(sql), rows)
        except psycopg.Error as e:
            raise StoreError(f"{self.where}: {_reason(e)}") from e

    def transaction(self) -> _PgTransaction:
        return _PgTransaction(self)

    def notify(self, channel: str, payload: str) -> None:
        self.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def listener(self, channels: Sequence[str]) -> PgListener:
        return PgListener(self.conninfo, self.where, channels)

    def close(self) -> None:
        self.conn.close()


class PgListener:
    """LISTEN on its own connection, so that notifications never wait behind
    (or interleave with) the store's queries and transactions."""

    def __init__(self, conninfo: str, where: str, channels: Sequence[str]) -> None:
        self.conninfo = conninfo
        self.where = where
        self.channels = list(channels)
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="safcm-master listener",
            )
            for channel in self.channels:
                conn.execute(f'LISTEN "{channel}"')
        except psycopg.Error as e:
            raise StoreError(f"cannot listen on {self.where}: {_reason(e)}") from e
        return conn

    def fileno(self) -> int:
        return self.conn.fileno()

    def drain(self) -> list[tuple[str, str]] | None:
        try:
            if self.conn.closed:
                raise psycopg.OperationalError("the connection is closed")
            return [(n.channel, n.payload) for n in self.conn.notifies(timeout=0)]
        except psycopg.Error:
            # Lost (a server restart, a failover): listen again. What was
            # sent meanwhile is gone, which the caller makes good by reloading.
            self.conn.close()
            self.conn = self._connect()
            return None

    def close(self) -> None:
        self.conn.close()


def _reason(error: psycopg.Error) -> str:
    """The server's or libpq's message, on one line."""
    return " ".join(str(error).split()) or type(error).__name__


class _PgTransaction:
    """BEGIN ... COMMIT on the autocommit connection; ROLLBACK if the block fails."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def __enter__(self) -> PgDatabase:
        self.db.execute("BEGIN")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif not self.db.conn.closed:
            # The block's own error is the one reported.
            with contextlib.suppress(psycopg.Error):
                self.db.conn.execute("ROLLBACK")


def open_pg(conninfo: str) -> PgDatabase:
    """Connect to the database and bring its schema up to date."""
    db = PgDatabase(conninfo)
    try:
        migrate(db)
    except StoreError:
        db.close()
        raise
    return db


def migrate(db: PgDatabase) -> None:
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS safcm_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM safcm_schema").fetchone()
        if row is None:
            db.execute("INSERT INTO safcm_schema (version) VALUES (0)")
        version = 0 if row is None else row[0]
        if version > len(PG_MIGRATIONS):
            raise StoreError(
                f"{db.where}: database schema version {version} is newer than this safcm "
                f"({len(PG_MIGRATIONS)}); upgrade safcm"
            )
        for number in range(version, len(PG_MIGRATIONS)):
            for statement in statements(PG_MIGRATIONS[number]):
                db.execute(statement)
            db.execute("UPDATE safcm_schema SET version = ?", (number + 1,))
