"""The master's SQLite database: one file in the state directory, WAL mode.

It holds the minion keys (master/keystore.py) and the job history
(master/jobstore.py). One file keeps backup and restore to one copy, and lets
a job and its first host rows be committed in one transaction.

The schema is versioned with PRAGMA user_version; each entry of MIGRATIONS
takes the database one version up, so an old state directory is upgraded in
place on start-up and never needs a manual step.
"""

from __future__ import annotations

import os
import sqlite3

from safcm.common.errors import StoreError

DB_NAME = "master.db"
# Milliseconds a connection waits for another writer before giving up. The
# daemon is the only writer of its own; another process holding the lock (a
# backup, an administrator's sqlite3 shell) must not stall the daemon's loop,
# so it waits little, fails that one operation, and retries it later.
BUSY_TIMEOUT_MS = 200
# Milliseconds a worker thread's connection (master/runs.py: a job's rows are
# written there) waits for the lock: the loop does not wait on the worker, so
# a job may wait out a short hold by another process; a longer one fails the
# RUN with a database error, as it did when the loop wrote the job.
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
]


def open_db(
    state_dir: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, any_thread: bool = False
) -> sqlite3.Connection:
    """Open (creating if needed) the master database and bring its schema up
    to date. `any_thread`: the connection may be closed by another thread
    than the one that uses it (a worker's, once the worker has ended)."""
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
        migrate(conn)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"cannot open the master database {path}: {e}") from e
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this safcm "
            f"({len(MIGRATIONS)}); upgrade safcm"
        )
    for number in range(version, len(MIGRATIONS)):
        with transaction(conn):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


def _statements(script: str) -> list[str]:
    """Split a migration into statements (our migrations have no ';' in literals)."""
    body = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


class transaction:
    """`with transaction(conn):` runs the block in BEGIN IMMEDIATE ... COMMIT.

    The connection is in autocommit mode (isolation_level=None), so every
    multi-statement change states its transaction explicitly.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
