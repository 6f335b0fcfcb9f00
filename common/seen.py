"""The minion's persistent record of envelopes already accepted, against replays.

Salt's CVE-2022-22936: a captured publish, sent again, ran the old job again.
Here every accepted envelope's (message type, jid) is recorded in SQLite
before the daemon acts on it, and a second envelope with the same pair is
refused with ReplayError, also after a restart.

An entry is kept until `keep_until`, which the caller sets to the envelope's
expires-at plus the clock skew it opens envelopes with
(protocol.open_message_at does this). Until then a replay is found here;
after that the same envelope fails the time window as expired. So purging
never opens a window for a replay, as long as the skew used for opening is
never larger than the one used for keep_until.

A minion also keeps here the jobs it accepted and has not finished
(`keep`, kept(), drop()), and marks those that began to change the host
(mark_started(), started()): written in the transaction that records the jid,
so one commit, one fsync, makes both durable before the receipt goes out,
and a crash can never leave a kept job whose jid a re-publish could pass
with. A finished job's drop is synced too: it must be on disk before the
job's result leaves the minion's spool (an unlink in another store, not
synced), or a crash could bring the job back without its result, to be
applied again.

Durability: WAL with synchronous=FULL, so an accepted jid survives a power
loss; a replay after a crash must still be refused. A change of one
statement is its own transaction (the connection autocommits): one commit,
without a BEGIN and a COMMIT around it, each a call into SQLite that the
minion pays for every job. One connection, used
from the thread that opened it (sqlite3's default check).
"""

from __future__ import annotations

import sqlite3

from safcm.common.crypto import Header
from safcm.common.errors import ReplayError, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    msg_type   INTEGER NOT NULL,
    jid        TEXT    NOT NULL,
    keep_until REAL    NOT NULL,
    PRIMARY KEY (msg_type, jid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_keep_until ON seen (keep_until);
CREATE TABLE IF NOT EXISTS kept_jobs (
    jid     TEXT PRIMARY KEY,
    body    BLOB NOT NULL,
    started INTEGER NOT NULL DEFAULT 0
);
"""
# A store made before kept jobs were marked started gets the column once.
_ADD_STARTED = "ALTER TABLE kept_jobs ADD COLUMN started INTEGER NOT NULL DEFAULT 0"
# SQLite's auto_vacuum mode FULL: free pages are returned at every commit.
_AUTO_VACUUM_FULL = 1
# Seconds between purges of expired entries by check_and_add(): each purge is
# a statement more in the transaction, and the table stays bounded by this
# many seconds of envelopes anyway.
PURGE_SPACING = 60.0
# How long, in milliseconds, to wait for a lock held by another connection
# to the same file before giving up (only one daemon should use it).
_BUSY_TIMEOUT_MS = 5000


class SeenJids:
    """A persistent set of (message type, jid), each kept until its keep_until time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._next_purge = float("-inf")  # check_and_add()'s first purges
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # The file shrinks again when a large kept job is dropped (else it
            # would keep the largest job's size for good). Set before the
            # first table; a store made without it is converted once.
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != _AUTO_VACUUM_FULL:
                self._db.execute(f"PRAGMA auto_vacuum = {_AUTO_VACUUM_FULL}")
                self._db.execute("VACUUM")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(kept_jobs)")}
            if "started" not in columns:
                self._db.execute(_ADD_STARTED)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the seen-jid store: {e}") from None

    def check_and_add(
        self, header: Header, *, keep_until: float, now: float, keep: bytes | None = None
    ) -> None:
        """Record an accepted envelope; ReplayError if its (type, jid) is already recorded.

        Entries whose keep_until has passed are purged in the same transaction
        (at most every PURGE_SPACING seconds of `now`), and `keep` (a job's
        packed body) is kept under its jid until drop(), unless the envelope
        is a replay.
        """
        try:
            with self._transaction():
                if now >= self._next_purge:
                    self._db.execute("DELETE FROM seen WHERE keep_until < ?", (now,))
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO seen (msg_type, jid, keep_until) VALUES (?, ?, ?)",
                    (header.msg_type, header.jid, keep_until),
                )
                inserted = cursor.rowcount == 1
                if inserted and keep is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO kept_jobs (jid, body) VALUES (?, ?)",
                        (header.jid, keep),
                    )
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot record jid {header.jid}: {e}") from None
        if now >= self._next_purge:  # committed: the next purge may wait
            self._next_purge = now + PURGE_SPACING
        if not inserted:
            raise ReplayError(f"replay of type {header.msg_type} jid {header.jid}", header)

    def contains(self, msg_type: int, jid: str) -> bool:
        try:
            row = self._db.execute(
                "SELECT 1 FROM seen WHERE msg_type = ? AND jid = ?", (msg_type, jid)
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read the seen-jid store: {e}") from None
        return row is not None

    def kept(self) -> list[str]:
        """The jids of the jobs kept and not dropped, oldest first."""
        try:
            return [jid for (jid,) in self._db.execute("SELECT jid FROM kept_jobs ORDER BY jid")]
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read the kept jobs: {e}") from None

    def kept_body(self, jid: str) -> bytes | None:
        try:
            row = self._db.execute("SELECT body FROM kept_jobs WHERE jid = ?", (jid,)).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read kept job {jid}: {e}") from None
        return None if row is None else bytes(row[0])

    def mark_started(self, jid: str) -> None:
        """Record, durably, that a kept job began to change the host: after a
        crash it is resumed even past its deadline, for the host is half
        way (a job never begun is not applied late)."""
        try:
            self._db.execute("UPDATE kept_jobs SET started = 1 WHERE jid = ?", (jid,))
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot mark kept job {jid} started: {e}") from None

    def started(self) -> frozenset[str]:
        """The kept jobs marked started."""
        try:
            rows = self._db.execute("SELECT jid FROM kept_jobs WHERE started = 1")
            return frozenset(jid for (jid,) in rows)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read the kept jobs: {e}") from None

    def drop(self, jid: str) -> None:
        """Forget a kept job (durably: module docstring)."""
        try:
            self._db.execute("DELETE FROM kept_jobs WHERE jid = ?", (jid,))
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot drop kept job {jid}: {e}") from None

    def purge(self, now: float) -> int:
        """Forget entries whose keep_until is before `now`; return how many."""
        try:
            return self._db.execute("DELETE FROM seen WHERE keep_until < ?", (now,)).rowcount
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot purge the seen-jid store: {e}") from None

    def __len__(self) -> int:
        try:
            return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read the seen-jid store: {e}") from None

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SeenJids:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raised."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
