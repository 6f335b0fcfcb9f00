"""The master's database: keys (master/keystore.py) and job history
(master/jobstore.py), behind one small interface, Database, with two
implementations:

- SQLite (the default): one file in the state directory, WAL mode. One file
  keeps backup and restore to one copy, and lets a job and its first host
  rows be committed in one transaction.
- PostgreSQL (master/pgdb.py), selected by `store: postgresql://...` in
  master.yaml: several masters on one database form a cluster (DESIGN
  section 10).

The stores write their SQL once, in the common subset of both (`?`
placeholders, ON CONFLICT, no engine-specific functions); each Database
adapts it and maps its driver's errors to StoreError, so no caller ever sees
sqlite3's or psycopg's exceptions. Every result is read whole before
execute() returns, for the same reason: a driver error cannot surface later,
in the middle of a caller's loop.

The schema is versioned; each entry of MIGRATIONS takes the database one
version up, so an old state directory is upgraded in place on start-up and
never needs a manual step. SQLite keeps the version in PRAGMA user_version.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from safcm.common.errors import StoreError

DB_NAME = "master.db"
# Milliseconds the loop's connection waits for another writer before giving
# up. Besides the loop, the daemon writes from its workers (below), one
# transaction at a time, each about one batch of results or a chunk of a
# job's rows; another process holding the lock (a backup, an administrator's
# sqlite3 shell) must not stall the daemon's loop, so it waits little, fails
# that one operation, and retries it later.
BUSY_TIMEOUT_MS = 200
# Milliseconds a worker's connection waits for the lock: the prepare worker's
# (master/prepworker.py: a job's rows) and the result writer's
# (master/resultwriter.py: results, receipts, heartbeat rows). The loop does
# not wait on a worker, so a worker may wait out a short hold by another
# process (or a large job's rows, written in many short transactions); a
# longer one fails its work with a database error: the RUN, or the batch of
# results, which minions then send again.
WORKER_BUSY_TIMEOUT_MS = 10_000

MIGRATIONS: list[str] = [
    # 1: keys and job history
    """
    CREATE TABLE minions (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected')),
        sign_pub    BLOB NOT NULL,
        kx_pub      BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        first_seen  REAL NOT NULL,
        last_seen   REAL,
        changed     REAL NOT NULL
    );
    -- Keys that presented themselves under the id of a known minion.
    CREATE TABLE refused_keys (
        id          TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL,
        PRIMARY KEY (id, fingerprint)
    );
    -- jid is time-sortable (common/protocol.py), so the primary key is also
    -- the time index: newest first is ORDER BY jid DESC, and retention is a
    -- range delete on it.
    CREATE TABLE jobs (
        jid        TEXT PRIMARY KEY,
        submitted  REAL NOT NULL,
        deadline   REAL NOT NULL,
        user       TEXT NOT NULL,
        target     TEXT NOT NULL,
        module     TEXT NOT NULL,
        dry_run    INTEGER NOT NULL,
        git_commit TEXT
    );
    CREATE INDEX jobs_target ON jobs (target, jid);
    CREATE TABLE job_hosts (
        jid       TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        host      TEXT NOT NULL,
        state     TEXT NOT NULL
                  CHECK (state IN ('sent', 'received', 'done', 'no_response')),
        status    TEXT CHECK (status IN ('ok', 'changed', 'failed')),
        envelope  BLOB,
        received  REAL,
        returned  REAL,
        changes   INTEGER,
        result    TEXT,
        PRIMARY KEY (jid, host)
    );
    CREATE INDEX job_hosts_host ON job_hosts (host, jid);
    CREATE INDEX job_hosts_open ON job_hosts (state) WHERE state IN ('sent', 'received');
    """,
    # 2: the CurveZMQ transport key; a refused key's public keys, so that
    # `keys accept ID --fingerprint` can choose it over the pending one; the
    # last heartbeat sequence number, so a replay is refused after a restart;
    # results stored as msgpack (about their wire size), not JSON.
    """
    ALTER TABLE minions ADD COLUMN curve_pub BLOB;
    ALTER TABLE minions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE refused_keys ADD COLUMN sign_pub BLOB;
    ALTER TABLE refused_keys ADD COLUMN kx_pub BLOB;
    ALTER TABLE refused_keys ADD COLUMN curve_pub BLOB;
    ALTER TABLE job_hosts ADD COLUMN result_bytes INTEGER;
    ALTER TABLE job_hosts ADD COLUMN plan TEXT;
    CREATE INDEX minions_curve ON minions (curve_pub);
    -- What a job sent to its hosts, as far as a result is checked against it
    -- (paths and trigger commands); hosts with the same plan share one row.
    CREATE TABLE job_plans (
        jid    TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        plan   BLOB NOT NULL,
        PRIMARY KEY (jid, digest)
    );
    """,
    # 3: whether a host's result arrived after it was recorded as no response,
    # so that `jobs show` can say so.
    """
    ALTER TABLE job_hosts ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: a job's content stored once (master/jobcontent.py): one manifest per
    # distinct host body, each distinct content once; each host row names its
    # manifest and the content its envelope carries. Envelopes are sealed when
    # published, so job_hosts.envelope is no longer written. host_content:
    # the last files job each host completed, whose content it keeps.
    """
    CREATE TABLE job_manifests (
        jid      TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        digest   TEXT NOT NULL,
        manifest BLOB NOT NULL,
        PRIMARY KEY (jid, digest)
    );
    CREATE TABLE job_content (
        jid    TEXT NOT NULL REFERENCES jobs (jid) ON DELETE CASCADE,
        digest BLOB NOT NULL,
        data   BLOB NOT NULL,
        PRIMARY KEY (jid, digest)
    );
    ALTER TABLE job_hosts ADD COLUMN manifest TEXT;
    ALTER TABLE job_hosts ADD COLUMN include BLOB;
    CREATE TABLE host_content (
        host TEXT PRIMARY KEY,
        jid  TEXT NOT NULL
    );
    """,
    # 5: a job's rows are written off the event loop, in several transactions
    # (master/jobstore.py store()); until the loop starts the job, started is
    # 0 and the job is not there for anyone reading (a result for it is
    # refused, `jobs list` does not show it). A master that stopped midway
    # deletes such a job at start-up: nothing of it was published. A NULL
    # job_hosts.include now means the whole of the host's manifest.
    """
    ALTER TABLE jobs ADD COLUMN started INTEGER NOT NULL DEFAULT 1;
    """,
    # 6: the facts each minion reports about its host (master/facts.py), as
    # it last sent them (msgpack, checked against the FACTS schema, so every
    # value has a bounded length): one row per minion, written only from
    # that minion's own signed FACTS message.
    """
    CREATE TABLE facts (
        host     TEXT PRIMARY KEY,
        facts    BLOB NOT NULL,
        reported REAL NOT NULL,
        changed  REAL NOT NULL
    );
    """,
    # 7: `jobs list --status` asks of each job, newest first, whether one of
    # its hosts has that outcome: with this index each question is one seek,
    # not a read of all the job's host rows.
    """
    CREATE INDEX job_hosts_outcome ON job_hosts (jid, state, status);
    """,
    # 8: the master that runs each job, and the masters' leases (master/cluster.py).
    # Used where several masters share a PostgreSQL database; an SQLite file
    # has the same columns so that the stores' SQL is one.
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    CREATE INDEX jobs_owner ON jobs (owner);
    CREATE TABLE masters (
        name        TEXT PRIMARY KEY,
        lease_until REAL NOT NULL
    );
    """,
]


class Rows:
    """The rows a statement returned, read whole; rows are indexed by
    position or by column name."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


class Database(Protocol):
    """What the stores need of a database."""

    # Where the data lives, for messages: a path, or a connection string
    # without its password.
    where: str
    # True if other masters may share the database (a cluster).
    shared: bool

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def transaction(self) -> Any:
        """A context manager: the statements in its block commit together,
        or none of them does."""
        ...

    def notify(self, channel: str, payload: str) -> None:
        """Tell the other masters sharing this database that `payload` changed
        (delivered when the current transaction commits); nothing where no
        other master can share the database."""
        ...

    def listener(self, channels: Sequence[str]) -> Listener | None:
        """A Listener for other masters' notify() on `channels`, or None where
        no other master can share the database."""
        ...

    def close(self) -> None: ...


class Listener(Protocol):
    """Notifications from other masters, for the event loop to watch."""

    def fileno(self) -> int:
        """Readable when notifications may have arrived."""
        ...

    def drain(self) -> list[tuple[str, str]] | None:
        """The (channel, payload) pairs that arrived, without waiting; None
        if the connection was lost and opened again, so that some may have
        been missed (the caller then reloads what it keeps)."""
        ...

    def close(self) -> None: ...


def open_store(
    state_dir: str,
    store: str | None = None,
    *,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    any_thread: bool = False,
) -> Database:
    """The database `store` names (master.yaml's store:): None or "sqlite",
    the SQLite file in `state_dir`; a PostgreSQL URI or connection string,
    that database. Created and migrated as needed; StoreError if it cannot be."""
    if store is None or store == "sqlite":
        return open_db(state_dir, busy_timeout_ms=busy_timeout_ms, any_thread=any_thread)
    # Imported here: psycopg is needed only by masters that use PostgreSQL.
    from safcm.master.pgdb import open_pg

    return open_pg(store)


class SqliteDatabase:
    # The state_dir lock keeps an SQLite file to one master.
    shared = False

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.where = path

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        try:
            cur = self.conn.execute(sql, params)
            return Rows(cur.fetchall(), cur.rowcount)
        except sqlite3.Error as e:
            raise _store_error(self.where, e) from e

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.Error as e:
            raise _store_error(self.where, e) from e

    def transaction(self) -> _SqliteTransaction:
        return _SqliteTransaction(self)

    def notify(self, channel: str, payload: str) -> None:
        """Nothing: an SQLite file belongs to one master (its state_dir lock)."""

    def listener(self, channels: Sequence[str]) -> None:
        return None

    def close(self) -> None:
        self.conn.close()


def _store_error(where: str, error: Exception) -> StoreError:
    return StoreError(f"database {where}: {error}")


class _SqliteTransaction:
    """BEGIN IMMEDIATE ... COMMIT. The connection is in autocommit mode
    (isolation_level=None), so every multi-statement change states its
    transaction explicitly; IMMEDIATE takes the write lock at once, so a
    busy database fails the transaction at its start, not half-way."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def __enter__(self) -> SqliteDatabase:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            # The block's own error is the one to report; a failed rollback
            # (the connection is gone) adds nothing.
            with contextlib.suppress(sqlite3.Error):
                self.db.conn.execute("ROLLBACK")


def transaction(db: Database) -> Any:
    """`with transaction(db):` runs the block in one transaction."""
    return db.transaction()


def open_db(
    state_dir: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, any_thread: bool = False
) -> SqliteDatabase:
    """Open (creating if needed) the master's SQLite database and bring its
    schema up to date. `any_thread`: the connection may be closed by another
    thread than the one that uses it (a worker's, once the worker has ended)."""
    path = os.path.join(state_dir, DB_NAME)
    try:
        conn = sqlite3.connect(
            path,
            timeout=busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=not any_thread,
        )
        os.chmod(path, 0o600)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before it returns. A result is acknowledged
        # to the minion only after its commit, and the minion then drops its copy.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"cannot open the master database {path}: {e}") from e
    db = SqliteDatabase(conn, path)
    try:
        migrate(db)
    except StoreError as e:
        conn.close()
        raise StoreError(f"cannot open the master database {path}: {e}") from e
    return db


def migrate(db: SqliteDatabase) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this safcm "
            f"({len(MIGRATIONS)}); upgrade safcm"
        )
    for number in range(version, len(MIGRATIONS)):
        with db.transaction():
            for statement in statements(MIGRATIONS[number]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")


def statements(script: str) -> list[str]:
    """Split a migration into statements (our migrations have no ';' in literals)."""
    body = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]
