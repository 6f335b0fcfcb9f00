"""The facts each minion reports about its host, on the master.

    store = FactStore(db)                     # the daemon's: master/intake.py writes
    store.put("web1", body, now=...)          # from web1's own signed FACTS only
    read_facts(state_dir)                     # the CLI's: facts, show, check (read-only)

A minion sends its facts (minion/facts.py) sealed and signed when it is
accepted and when they change; the master checks them against the FACTS
schema (common/protocol.py, every value of bounded length) and stores them
under the envelope's sender, never under a name from the body, so no minion
can write another's. Facts are the host's claim: they are shown, read by
templates (`facts`) and match detected groups (master/repository.py), which
can only ever give a host its own configuration.

HostFacts is what the compiler sees: the facts a host reported, without
the ones it could not tell (null). format_table() and to_document() are the
two forms of `safcm-master facts`; both are pure.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from safcm.common import codec
from safcm.common.errors import StoreError
from safcm.common.text import escape
from safcm.master.db import DB_NAME, Database

# The migration (master/db.py) that made the facts table: an older database
# has no facts yet.
FACTS_SCHEMA_VERSION = 6
# Nesting of a stored facts body: a flat map.
_FACTS_DEPTH = 2
# What a read of the database (_read()) finds.
_Found = TypeVar("_Found")


class HostFacts(dict[str, Any]):
    """The facts one host reported, as templates and detected groups see
    them: a fact it could not tell (null on the wire) is missing, so a
    template that uses it fails with missing_message(), and a detected group
    that asks for it does not take the host."""

    def __init__(self, reported: Mapping[str, Any] | None) -> None:
        super().__init__((k, v) for k, v in (reported or {}).items() if v is not None)
        # Private: a template reads facts.NAME, and the sandbox hides "_" names.
        self._reported = reported is not None

    def missing_message(self, name: object) -> str:
        """Why a template cannot read fact `name` (repository.py's undefined)."""
        if not self._reported:
            return f"no fact {name!r}: this host has not reported its facts yet"
        return f"no fact {name!r} in this host's facts (it reported: {', '.join(sorted(self))})"


@dataclass(frozen=True, slots=True)
class Reported:
    """One host's facts as stored: the values (FACTS schema, nulls kept), the
    time they last arrived and the time they last differed from the ones before."""

    host: str
    facts: dict[str, Any]
    reported: float
    changed: float


class FactStore:
    """The facts table of the daemon's database."""

    def __init__(self, conn: Database) -> None:
        self.conn = conn

    def put(self, host: str, facts: dict[str, Any], *, now: float) -> bool:
        """Store what `host` reported at `now` (its body already checked against
        the FACTS schema); True if the facts differ from the stored ones."""
        packed = codec.canonical_pack(facts)
        row = self.conn.execute("SELECT facts FROM facts WHERE host = ?", (host,)).fetchone()
        changed = row is None or bytes(row[0]) != packed
        if changed:
            self.conn.execute(
                "INSERT INTO facts (host, facts, reported, changed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (host) DO UPDATE SET facts = excluded.facts,"
                " reported = excluded.reported, changed = excluded.changed",
                (host, packed, now, now),
            )
        else:
            self.conn.execute("UPDATE facts SET reported = ? WHERE host = ?", (now, host))
        return changed

    def all(self) -> dict[str, Reported]:
        return _rows(self.conn)


def read_facts(state_dir: str, store: str = "sqlite") -> dict[str, Reported]:
    """Every host's stored facts, read from the master's database without
    writing to it (the CLI's show, check and facts; the daemon may run).
    Nothing stored yet (no database, or one from before facts): {}.
    StoreError if the database cannot be read (not root?). `store`:
    master.yaml's; a PostgreSQL store is read through the store itself."""
    return _read(state_dir, store, "the facts", FACTS_SCHEMA_VERSION, _rows, {})


def read_key_ids(state_dir: str, store: str = "sqlite") -> set[str]:
    """Every minion id the master holds a key for (pending, accepted or
    rejected), read as read_facts() reads: `facts` tells a host that has not
    reported yet from one the master does not know."""
    return _read(state_dir, store, "the keys", 1, _key_ids, set())


def _read(
    state_dir: str,
    store: str,
    what: str,
    since: int,
    query: Callable[[Any], _Found],
    nothing: _Found,
) -> _Found:
    """`query` on the master's database, opened without writing to it;
    `nothing` if there is no database yet or it is older than migration
    `since` (master/db.py). StoreError, naming `what`, if it cannot be read."""
    if store != "sqlite":
        from safcm.master.db import open_store

        db = open_store(state_dir, store)
        try:
            return query(db)
        finally:
            db.close()
    path = os.path.join(state_dir, DB_NAME)
    if not os.path.exists(path):
        return nothing
    try:
        # A URI, for mode=ro; quoted, since a state_dir may hold "?" or "#".
        uri = f"file:{urllib.parse.quote(path)}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = ON")
            if conn.execute("PRAGMA user_version").fetchone()[0] < since:
                return nothing
            return query(conn)
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot read {what} in {path}: {e}") from e


def _key_ids(conn: Any) -> set[str]:
    return {row[0] for row in conn.execute("SELECT id FROM minions")}


def _rows(conn: Any) -> dict[str, Reported]:
    """The facts table's rows (`conn`: a Database or an sqlite3 connection)."""
    found = {}
    for host, packed, reported, changed in conn.execute(
        "SELECT host, facts, reported, changed FROM facts ORDER BY host"
    ):
        facts = codec.unpack(bytes(packed), max_depth=_FACTS_DEPTH)
        found[host] = Reported(host, facts, reported, changed)
    return found


def host_facts(stored: Mapping[str, Reported]) -> dict[str, HostFacts]:
    """What the compiler gets: each host's facts as HostFacts."""
    return {host: HostFacts(r.facts) for host, r in stored.items()}


# ---- safcm-master facts ----

_COLUMNS = (
    ("OS", "os_id"),
    ("VERSION", "os_version_id"),
    ("ARCH", "architecture"),
    ("KERNEL", "kernel"),
    ("HOSTNAME", "hostname"),
    ("CPUS", "cpu_count"),
    ("MEMORY", "memory_bytes"),
)
NOT_REPORTED = "no facts reported yet"


def _memory(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def format_table(
    hosts: Iterable[str], stored: Mapping[str, Reported], format_time: Callable[[float], str]
) -> str:
    """The human form: one row per host (every string from a host escaped);
    `format_time` writes a unix time for people."""
    rows = [["HOST", *(title for title, _ in _COLUMNS), "REPORTED"]]
    missing = []
    for host in hosts:
        r = stored.get(host)
        if r is None:
            missing.append(host)
            continue
        cells = [escape(host)]
        for _, name in _COLUMNS:
            value = r.facts.get(name)
            if value is None:
                cells.append("-")
            elif name == "memory_bytes":
                cells.append(_memory(value))
            else:
                cells.append(escape(str(value)))
        cells.append(format_time(r.reported))
        rows.append(cells)
    lines = []
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines.extend(f"{escape(host)}: {NOT_REPORTED}" for host in missing)
    if not lines:
        lines.append(NOT_REPORTED)
    return "\n".join(lines)


def to_document(
    hosts: Iterable[str], stored: Mapping[str, Reported], iso_time: Callable[[float], str]
) -> list[dict[str, Any]]:
    """The hosts of the --json form (docs/schema/facts.json): each host's
    facts (null if it reported none), when they last arrived and last changed."""
    out = []
    for host in hosts:
        r = stored.get(host)
        out.append(
            {
                "host": host,
                "facts": None if r is None else dict(r.facts),
                "reported": None if r is None else iso_time(r.reported),
                "changed": None if r is None else iso_time(r.changed),
            }
        )
    return out
