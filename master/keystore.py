"""Minion keys and their states: pending, accepted, rejected.

A minion id is bound to the first key pair it enrols with. The same id with
other keys is refused and remembered in refused_keys, so that `keys list`
shows the attempt: it is either an impersonation or a reinstalled host, and
only the administrator can tell (`keys delete ID` lets the new key enrol).

The daemon is the only writer; it keeps every row in memory, so checking a
heartbeat's sender costs no query. last_seen changes with every heartbeat and
is written back in batches (flush_last_seen), not once per heartbeat.
"""

from __future__ import annotations

import enum
import fnmatch
import sqlite3
from dataclasses import dataclass, replace

from common.errors import UsageError
from master.db import transaction

# Enrolment is the one thing an unauthenticated peer may do, so what it can
# make us store is bounded: at most this many pending keys (new ids are
# refused beyond it until an administrator accepts, rejects or deletes some),
# and this many refused keys remembered per known id (the oldest go first).
MAX_PENDING_KEYS = 5000
MAX_REFUSED_PER_ID = 10


class KeyState(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class MinionKey:
    id: str
    state: KeyState
    sign_pub: bytes
    kx_pub: bytes
    fingerprint: str
    first_seen: float
    last_seen: float | None
    changed: float


@dataclass(frozen=True)
class RefusedKey:
    id: str
    fingerprint: str
    attempts: int
    first_seen: float
    last_seen: float


class KeyStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._keys: dict[str, MinionKey] = {}
        self._dirty_seen: set[str] = set()
        for row in conn.execute("SELECT * FROM minions"):
            key = MinionKey(
                id=row["id"],
                state=KeyState(row["state"]),
                sign_pub=row["sign_pub"],
                kx_pub=row["kx_pub"],
                fingerprint=row["fingerprint"],
                first_seen=row["first_seen"],
                last_seen=row["last_seen"],
                changed=row["changed"],
            )
            self._keys[key.id] = key

    def get(self, minion_id: str) -> MinionKey | None:
        return self._keys.get(minion_id)

    def accepted(self, minion_id: str) -> MinionKey | None:
        key = self._keys.get(minion_id)
        return key if key is not None and key.state is KeyState.ACCEPTED else None

    def all(self) -> list[MinionKey]:
        return sorted(self._keys.values(), key=lambda k: k.id)

    def refused(self) -> list[RefusedKey]:
        rows = self.conn.execute("SELECT * FROM refused_keys ORDER BY id, last_seen")
        return [
            RefusedKey(r["id"], r["fingerprint"], r["attempts"], r["first_seen"], r["last_seen"])
            for r in rows
        ]

    def enrol(
        self,
        minion_id: str,
        sign_pub: bytes,
        kx_pub: bytes,
        fingerprint: str,
        *,
        now: float,
        auto_accept: bool,
    ) -> KeyState | None:
        """Register an enrolment request; returns the id's state, or None if the
        id is known with other keys (the attempt is recorded) or if there are
        already MAX_PENDING_KEYS pending keys."""
        key = self._keys.get(minion_id)
        if key is None:
            if not auto_accept and self.pending_count() >= MAX_PENDING_KEYS:
                return None
            state = KeyState.ACCEPTED if auto_accept else KeyState.PENDING
            key = MinionKey(minion_id, state, sign_pub, kx_pub, fingerprint, now, None, now)
            self.conn.execute(
                "INSERT INTO minions (id, state, sign_pub, kx_pub, fingerprint, first_seen,"
                " changed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (minion_id, str(state), sign_pub, kx_pub, fingerprint, now, now),
            )
            self._keys[minion_id] = key
            return state
        if key.sign_pub == sign_pub and key.kx_pub == kx_pub:
            return key.state
        self.conn.execute(
            "INSERT INTO refused_keys (id, fingerprint, attempts, first_seen, last_seen)"
            " VALUES (?, ?, 1, ?, ?) ON CONFLICT (id, fingerprint)"
            " DO UPDATE SET attempts = attempts + 1, last_seen = excluded.last_seen",
            (minion_id, fingerprint, now, now),
        )
        self.conn.execute(
            "DELETE FROM refused_keys WHERE id = ? AND fingerprint NOT IN"
            " (SELECT fingerprint FROM refused_keys WHERE id = ?"
            "  ORDER BY last_seen DESC LIMIT ?)",
            (minion_id, minion_id, MAX_REFUSED_PER_ID),
        )
        return None

    def pending_count(self) -> int:
        return sum(1 for k in self._keys.values() if k.state is KeyState.PENDING)

    def match(self, patterns: list[str]) -> list[str]:
        """Ids matching any pattern (exact ids or globs); UsageError names a
        pattern that matches nothing."""
        matched: set[str] = set()
        unmatched = []
        for pattern in patterns:
            hits = [i for i in self._keys if fnmatch.fnmatchcase(i, pattern)]
            if not hits:
                unmatched.append(pattern)
            matched.update(hits)
        if unmatched:
            raise UsageError(f"no minion key matches: {', '.join(unmatched)}")
        return sorted(matched)

    def set_state(self, patterns: list[str], state: KeyState, *, now: float) -> list[MinionKey]:
        """Accept or reject the matching keys (from any other state); returns
        those that changed. A pattern that matches nothing is a UsageError."""
        ids = self.match(patterns)
        changing = [i for i in ids if self._keys[i].state is not state]
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE minions SET state = ?, changed = ? WHERE id = ?",
                [(str(state), now, i) for i in changing],
            )
        for i in changing:
            self._keys[i] = replace(self._keys[i], state=state, changed=now)
        return [self._keys[i] for i in changing]

    def delete(self, patterns: list[str]) -> list[MinionKey]:
        """Forget the matching keys and their refused attempts; returns them."""
        ids = self.match(patterns)
        with transaction(self.conn):
            self.conn.executemany("DELETE FROM minions WHERE id = ?", [(i,) for i in ids])
            self.conn.executemany("DELETE FROM refused_keys WHERE id = ?", [(i,) for i in ids])
        deleted = [self._keys.pop(i) for i in ids]
        self._dirty_seen.difference_update(ids)
        return deleted

    def touch(self, minion_id: str, now: float) -> None:
        """Note an authenticated message from an accepted minion (kept in memory)."""
        key = self._keys.get(minion_id)
        if key is not None:
            self._keys[minion_id] = replace(key, last_seen=now)
            self._dirty_seen.add(minion_id)

    def flush_last_seen(self) -> None:
        if not self._dirty_seen:
            return
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE minions SET last_seen = ? WHERE id = ?",
                [(self._keys[i].last_seen, i) for i in sorted(self._dirty_seen)],
            )
        self._dirty_seen.clear()
