"""Minion keys and their states: pending, accepted, rejected.

A minion id is bound to the first key pair it enrols with. The same id with
other keys is refused and remembered in refused_keys, so that `keys list`
shows the attempt: it is either an impersonation or a reinstalled host, and
only the administrator can tell (`keys delete ID` lets the new key enrol).

An id claimed by several keys is contested: `keys accept` then needs the
fingerprint of the key to accept (accept(..., fingerprint=...)), which may
also be one of the refused keys: the real minion may have come second.

The daemon keeps every row in memory, so checking a heartbeat's sender or a
transport key costs no query. last_seen and the heartbeat sequence change
with every heartbeat and are written back in batches (flush), not once per
heartbeat.

Masters that share a PostgreSQL database (a cluster) share the keys: every
change of a key's row is announced on KEYS_CHANNEL with the minion id, and
each master reloads that row (reload()), so a key accepted, rejected or
deleted on any master holds on all. last_seen is the exception: it changes
too often to announce, so `keys list` reads it fresh (refresh_seen()).
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, replace
from typing import Any

from safcm.common.crypto import PublicKeys, fingerprints_match
from safcm.common.errors import UsageError
from safcm.master.db import Database, transaction

# Enrolment is the one thing an unauthenticated peer may do, so what it can
# make us store is bounded: at most this many pending keys, and this many
# refused keys remembered per known id (the oldest go first). At the limit a
# new id takes the place of the pending key heard from longest ago
# (make_room()), so a flood of invented ids cannot shut real hosts out until
# an administrator clears it: a running minion asks again every heartbeat
# interval, which keeps its key among the freshest.
MAX_PENDING_KEYS = 5000
MAX_REFUSED_PER_ID = 10
# The notification channel of key changes between masters (master/db.py notify()).
KEYS_CHANNEL = "safcm_keys"


# What makes a key pattern a glob (fnmatch); minion ids have none of them.
GLOB_CHARACTERS = "*?["


class KeyState(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Action(enum.StrEnum):
    """What `keys accept|reject|delete` does to the keys it matches."""

    ACCEPT = "accept"
    REJECT = "reject"
    DELETE = "delete"


# The keys a glob may change, by action (left_by_patterns()): pending ones,
# and those where the action would leave them anyway. Named, a key changes
# from any state.
_BY_PATTERN = {
    Action.ACCEPT: (KeyState.PENDING, KeyState.ACCEPTED),
    Action.REJECT: (KeyState.PENDING, KeyState.REJECTED),
    Action.DELETE: (KeyState.PENDING, KeyState.REJECTED),
}


@dataclass(slots=True)
class Seen:
    """When a minion was last heard from, and its last heartbeat's sequence
    number. Every heartbeat changes them, so they are changed in place, not
    by replacing the whole (frozen) MinionKey, which costs more than the rest
    of a heartbeat's handling; they reach the database in batches (flush)."""

    last_seen: float | None
    seq: int = 0  # the last heartbeat's sequence number


# A minion's last-seen time and heartbeat sequence number, as written back:
# (last_seen, seq, id, fingerprint of its key).
SeenRow = tuple[float | None, int, str, str]


@dataclass(frozen=True)
class MinionKey:
    id: str
    state: KeyState
    sign_pub: bytes
    kx_pub: bytes
    curve_pub: bytes | None  # None for a key enrolled before CURVE: it must enrol again
    fingerprint: str
    first_seen: float
    changed: float
    seen: Seen  # shared by the replacements of this key (a new state keeps it)

    @property
    def last_seen(self) -> float | None:
        return self.seen.last_seen

    @property
    def seq(self) -> int:
        return self.seen.seq

    @property
    def heard(self) -> float:
        """When its minion was last heard from: its enrolment, if not since."""
        return self.first_seen if self.last_seen is None else self.last_seen

    @property
    def public(self) -> PublicKeys | None:
        if self.curve_pub is None:
            return None
        return PublicKeys(sign=self.sign_pub, kx=self.kx_pub, curve=self.curve_pub)


@dataclass(frozen=True)
class RefusedKey:
    id: str
    fingerprint: str
    attempts: int
    first_seen: float
    last_seen: float
    public: PublicKeys | None = None


class KeyStore:
    def __init__(self, conn: Database) -> None:
        self.conn = conn
        self._keys: dict[str, MinionKey] = {}
        self._by_curve: dict[bytes, str] = {}
        self._pending: set[str] = set()
        self._dirty: set[str] = set()
        # True if other masters share these keys (a cluster).
        self.shared = conn.shared
        for row in conn.execute("SELECT * FROM minions"):
            self._put(_key(row))

    def reload(self, minion_id: str) -> tuple[MinionKey | None, MinionKey | None]:
        """Read `minion_id`'s row again (another master changed it); returns
        the key as it was kept and as it is now (None: no such key)."""
        old = self._keys.get(minion_id)
        row = self.conn.execute("SELECT * FROM minions WHERE id = ?", (minion_id,)).fetchone()
        if old is not None:
            self._pop(minion_id)
        new = None if row is None else _key(row)
        if new is not None:
            if old is not None and minion_id in self._dirty:
                # Our own unflushed heartbeat news is newer than the row's.
                new = replace(new, seen=Seen(old.last_seen, max(old.seq, new.seq)))
            self._put(new)
        else:
            self._dirty.discard(minion_id)
        return old, new

    def reload_all(self) -> list[tuple[MinionKey | None, MinionKey | None]]:
        """reload() every key, known here or in the database (after notifications
        may have been missed); returns the (old, new) pairs that differ."""
        ids = set(self._keys) | {
            row[0] for row in self.conn.execute("SELECT id FROM minions").fetchall()
        }
        changed = []
        for minion_id in sorted(ids):
            old, new = self.reload(minion_id)
            if old is None or new is None or _identity(old) != _identity(new):
                changed.append((old, new))
        return changed

    def refresh_seen(self) -> None:
        """Take last-seen times from the database where they are newer (another
        master heard the minion more recently)."""
        for minion_id, last_seen in self.conn.execute("SELECT id, last_seen FROM minions"):
            key = self._keys.get(minion_id)
            if key is not None and last_seen is not None and (key.last_seen or 0) < last_seen:
                key.seen.last_seen = last_seen

    def _put(self, key: MinionKey) -> None:
        old = self._keys.get(key.id)
        if old is not None and old.curve_pub is not None:
            self._by_curve.pop(old.curve_pub, None)
        self._keys[key.id] = key
        if key.curve_pub is not None:
            self._by_curve[key.curve_pub] = key.id
        if key.state is KeyState.PENDING:
            self._pending.add(key.id)
        else:
            self._pending.discard(key.id)

    def _pop(self, minion_id: str) -> MinionKey:
        key = self._keys.pop(minion_id)
        if key.curve_pub is not None:
            self._by_curve.pop(key.curve_pub, None)
        self._pending.discard(minion_id)
        return key

    def get(self, minion_id: str) -> MinionKey | None:
        return self._keys.get(minion_id)

    def by_curve(self, curve_pub: bytes) -> MinionKey | None:
        """The key whose transport key is `curve_pub`, in any state."""
        minion_id = self._by_curve.get(curve_pub)
        return None if minion_id is None else self._keys[minion_id]

    def accepted_by_curve(self, curve_pub: bytes) -> MinionKey | None:
        key = self.by_curve(curve_pub)
        return key if key is not None and key.state is KeyState.ACCEPTED else None

    def accepted(self, minion_id: str) -> MinionKey | None:
        key = self._keys.get(minion_id)
        return key if key is not None and key.state is KeyState.ACCEPTED else None

    def without_transport_key(self) -> set[str]:
        """Ids of the accepted keys enrolled before CURVE (they must enrol again)."""
        return {
            k.id
            for k in self._keys.values()
            if k.curve_pub is None and k.state is KeyState.ACCEPTED
        }

    def all(self) -> list[MinionKey]:
        return sorted(self._keys.values(), key=lambda k: k.id)

    def refused(self, minion_id: str | None = None) -> list[RefusedKey]:
        """Keys refused under a known id (all ids, or `minion_id`'s)."""
        if minion_id is None:
            rows = self.conn.execute("SELECT * FROM refused_keys ORDER BY id, last_seen")
        else:
            rows = self.conn.execute(
                "SELECT * FROM refused_keys WHERE id = ? ORDER BY last_seen", (minion_id,)
            )
        return [
            RefusedKey(
                r["id"],
                r["fingerprint"],
                r["attempts"],
                r["first_seen"],
                r["last_seen"],
                None
                if r["curve_pub"] is None
                else PublicKeys(sign=r["sign_pub"], kx=r["kx_pub"], curve=r["curve_pub"]),
            )
            for r in rows
        ]

    def enrol(
        self, minion_id: str, keys: PublicKeys, *, now: float, auto_accept: bool
    ) -> KeyState | None:
        """Register an enrolment request; returns the id's state, or None if the
        id is known with other keys (the attempt is recorded) or if there are
        already MAX_PENDING_KEYS pending keys."""
        key = self._keys.get(minion_id)
        fingerprint = keys.fingerprint()
        if key is None:
            if not auto_accept and self.pending_count() >= MAX_PENDING_KEYS:
                return None
            state = KeyState.ACCEPTED if auto_accept else KeyState.PENDING
            self._insert(minion_id, state, keys, now)
            return state
        if key.public == keys:
            return key.state
        if key.curve_pub is None and key.sign_pub == keys.sign and key.kx_pub == keys.kx:
            # Enrolled before the transport key existed: the same identity, now complete.
            self.conn.execute(
                "UPDATE minions SET curve_pub = ?, fingerprint = ? WHERE id = ?",
                (keys.curve, fingerprint, minion_id),
            )
            self.conn.notify(KEYS_CHANNEL, minion_id)
            self._put(replace(key, curve_pub=keys.curve, fingerprint=fingerprint))
            return key.state
        self.conn.execute(
            "INSERT INTO refused_keys (id, fingerprint, attempts, first_seen, last_seen,"
            " sign_pub, kx_pub, curve_pub) VALUES (?, ?, 1, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id, fingerprint)"
            " DO UPDATE SET attempts = refused_keys.attempts + 1, last_seen = excluded.last_seen",
            (minion_id, fingerprint, now, now, keys.sign, keys.kx, keys.curve),
        )
        self.conn.execute(
            "DELETE FROM refused_keys WHERE id = ? AND fingerprint NOT IN"
            " (SELECT fingerprint FROM refused_keys WHERE id = ?"
            "  ORDER BY last_seen DESC LIMIT ?)",
            (minion_id, minion_id, MAX_REFUSED_PER_ID),
        )
        return None

    def _insert(self, minion_id: str, state: KeyState, keys: PublicKeys, now: float) -> None:
        fingerprint = keys.fingerprint()
        self.conn.execute(
            "INSERT INTO minions (id, state, sign_pub, kx_pub, curve_pub, fingerprint,"
            " first_seen, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (minion_id, str(state), keys.sign, keys.kx, keys.curve, fingerprint, now, now),
        )
        self.conn.notify(KEYS_CHANNEL, minion_id)
        self._put(
            MinionKey(
                minion_id, state, keys.sign, keys.kx, keys.curve, fingerprint, now, now, Seen(None)
            )
        )

    def pending_count(self) -> int:
        return len(self._pending)

    def make_room(self) -> MinionKey | None:
        """With MAX_PENDING_KEYS pending keys, forget the one heard from
        longest ago (as delete() forgets it), so that a new id can enrol;
        returns it. A real host that is still running asks again and enrols anew;
        its id is not reserved meanwhile, so another key that claims it
        first is pending and the host's key is refused, as for any id claimed
        twice (the administrator then chooses by fingerprint)."""
        if not self._pending or len(self._pending) < MAX_PENDING_KEYS:
            return None
        stalest = min(self._pending, key=lambda i: self._keys[i].heard)
        return self._forget([stalest])[0]

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
            # Not "nothing changed" and exit 0, as salt-key does: a script
            # that accepts a host before its minion has asked must not take
            # the id as accepted, nor an administrator a typo.
            raise UsageError(
                f"no minion key matches: {', '.join(unmatched)}; nothing was changed "
                "(safcm-master keys list shows the keys)"
            )
        return sorted(matched)

    def left_by_patterns(self, patterns: list[str], action: Action) -> list[MinionKey]:
        """The keys that only a glob of `patterns` matches and that `action`
        leaves as they are, since an administrator decided otherwise: a glob
        accepts or rejects pending keys only (as salt-key's do), and deletes
        pending and rejected ones. `keys accept 'web*'` for new hosts must not
        accept the key rejected last week, nor `keys reject 'web*'` or `keys
        delete '*'` (an enrolment flood cleared) cut a fleet. Named, a key
        changes from any state."""
        return self._left(patterns, self.match(patterns), action)

    def _left(self, patterns: list[str], matched: list[str], action: Action) -> list[MinionKey]:
        """left_by_patterns() of the ids `patterns` matched."""
        named = {p for p in patterns if not any(c in p for c in GLOB_CHARACTERS)}
        return [
            self._keys[i]
            for i in matched
            if i not in named and self._keys[i].state not in _BY_PATTERN[action]
        ]

    def _by_patterns(self, patterns: list[str], action: Action) -> list[str]:
        """The ids `action` changes: those `patterns` match less those left
        (left_by_patterns()). UsageError if a pattern matches nothing, or if
        they match only keys left."""
        ids = self.match(patterns)
        left = {k.id: k.state for k in self._left(patterns, ids, action)}
        ids = [i for i in ids if i not in left]
        if not ids:
            raise UsageError(
                f"{', '.join(patterns)} match only keys a pattern does not {action}: "
                + ", ".join(f"{i} ({s})" for i, s in left.items())
                + f"; name a key to {action} it"
            )
        return ids

    def set_state(
        self,
        patterns: list[str],
        state: KeyState,
        *,
        now: float,
        fingerprint: str | None = None,
    ) -> list[MinionKey]:
        """Accept or reject the matching keys (those a glob may change,
        left_by_patterns(), and any named); returns those that changed. A
        pattern that matches nothing, or patterns that match only keys left,
        are a UsageError.

        Accepting an id that other keys have claimed (refused_keys) needs
        `fingerprint`, naming the one id's key to accept: the key it holds
        now, or one of those refused, which then takes its place.
        """
        if fingerprint is not None:
            ids = self.match(patterns)
            if len(ids) != 1:
                raise UsageError(
                    f"--fingerprint names one key, but the ids match {len(ids)} minions"
                )
            self._choose_key(ids[0], fingerprint, now)
        elif state is KeyState.ACCEPTED:
            ids = self._by_patterns(patterns, Action.ACCEPT)
            contested = [i for i in ids if self.refused(i)]
            if contested:
                raise UsageError(
                    "other keys have claimed the id of "
                    + ", ".join(contested)
                    + ": compare fingerprints with 'safcm-minion fingerprint' on the host and "
                    "run 'safcm-master keys accept ID --fingerprint FP' for each; "
                    "nothing was accepted"
                )
        else:
            ids = self._by_patterns(patterns, Action.REJECT)
        changing = [i for i in ids if self._keys[i].state is not state]
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE minions SET state = ?, changed = ? WHERE id = ?",
                [(str(state), now, i) for i in changing],
            )
            for i in changing:
                self.conn.notify(KEYS_CHANNEL, i)
        for i in changing:
            self._put(replace(self._keys[i], state=state, changed=now))
        if state is KeyState.ACCEPTED:  # settled: forget the other claims
            with transaction(self.conn):
                self.conn.executemany("DELETE FROM refused_keys WHERE id = ?", [(i,) for i in ids])
        return [self._keys[i] for i in changing]

    def _choose_key(self, minion_id: str, fingerprint: str, now: float) -> None:
        """Make the key with `fingerprint` the one `minion_id` holds; UsageError if
        neither its key nor a refused one has that fingerprint."""
        key = self._keys[minion_id]
        if fingerprints_match(key.fingerprint, fingerprint):
            return
        for claim in self.refused(minion_id):
            if claim.public is not None and fingerprints_match(claim.fingerprint, fingerprint):
                with transaction(self.conn):
                    self.conn.execute("DELETE FROM minions WHERE id = ?", (minion_id,))
                    self.conn.notify(KEYS_CHANNEL, minion_id)
                    self._pop(minion_id)
                    self._insert(minion_id, KeyState.PENDING, claim.public, now)
                return
        raise UsageError(
            f"no key with fingerprint {fingerprint} has claimed {minion_id}; "
            f"it holds {key.fingerprint}"
        )

    def delete(self, patterns: list[str]) -> list[MinionKey]:
        """Forget the matching keys (an accepted one only when named,
        left_by_patterns()), their refused attempts and the facts they
        stated (master/facts.py: a host enrolled anew under the id must not
        inherit them); returns them."""
        return self._forget(self._by_patterns(patterns, Action.DELETE))

    def _forget(self, ids: list[str]) -> list[MinionKey]:
        """Delete the keys `ids`, their refused attempts and their facts."""
        with transaction(self.conn):
            self.conn.executemany("DELETE FROM minions WHERE id = ?", [(i,) for i in ids])
            self.conn.executemany("DELETE FROM refused_keys WHERE id = ?", [(i,) for i in ids])
            self.conn.executemany("DELETE FROM facts WHERE host = ?", [(i,) for i in ids])
            for i in ids:
                self.conn.notify(KEYS_CHANNEL, i)
        forgotten = [self._pop(i) for i in ids]
        self._dirty.difference_update(ids)
        return forgotten

    def touch(self, minion_id: str, now: float, seq: int | None = None) -> None:
        """Note a message from a minion (a heartbeat, or a pending minion's
        signed enrolment request), and the sequence number of a heartbeat;
        kept in memory until flush()."""
        key = self._keys.get(minion_id)
        if key is not None:
            key.seen.last_seen = now
            if seq is not None:
                key.seen.seq = seq
            self._dirty.add(minion_id)

    def dirty(self) -> bool:
        return bool(self._dirty)

    def unwritten_seen(self) -> list[SeenRow]:
        """The last-seen times and heartbeat sequence numbers not written yet,
        as write_seen() writes them; they stay unwritten (reload() keeps them)
        until seen_written() is told they were."""
        keys = [self._keys[i] for i in sorted(self._dirty)]
        return [(k.last_seen, k.seq, k.id, k.fingerprint) for k in keys]

    def seen_written(self, rows: list[SeenRow]) -> None:
        """`rows` of unwritten_seen() were committed: their minions are written
        back, unless a heartbeat changed them since."""
        for last_seen, seq, minion_id, _ in rows:
            key = self._keys.get(minion_id)
            if key is None or (key.last_seen, key.seq) == (last_seen, seq):
                self._dirty.discard(minion_id)

    def flush(self) -> None:
        """Write last-seen times and heartbeat sequence numbers back. (The
        daemon's result writer writes them with each batch of results:
        master/intake.py; this is for the rest.)"""
        rows = self.unwritten_seen()
        if not rows:
            return
        with transaction(self.conn):
            write_seen(self.conn, rows)
        self.seen_written(rows)


def write_seen(conn: Database, rows: list[SeenRow]) -> None:
    """Write rows of KeyStore.unwritten_seen(), in the caller's transaction.
    Only to the key they were read from: a row written late (off the loop)
    never lends its sequence number to a key that replaced it meanwhile (a
    minion deleted and enrolled again), whose heartbeats it would refuse."""
    conn.executemany(
        "UPDATE minions SET last_seen = ?, seq = ? WHERE id = ? AND fingerprint = ?", rows
    )


def _key(row: Any) -> MinionKey:
    return MinionKey(
        id=row["id"],
        state=KeyState(row["state"]),
        sign_pub=row["sign_pub"],
        kx_pub=row["kx_pub"],
        curve_pub=row["curve_pub"],
        fingerprint=row["fingerprint"],
        first_seen=row["first_seen"],
        changed=row["changed"],
        seen=Seen(row["last_seen"], row["seq"]),
    )


def _identity(key: MinionKey) -> tuple[object, ...]:
    """The parts of a key whose change matters to the daemon: its state and
    its public keys (not last_seen)."""
    return (key.state, key.sign_pub, key.kx_pub, key.curve_pub)
