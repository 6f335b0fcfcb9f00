"""Several masters on one PostgreSQL database: who runs which job, and taking
over the jobs of a master that died.

Every job has an owner, the master that created it (jobs.owner): it alone
re-publishes the job's envelopes and records "no response" at the deadline.
Each master holds a lease in the table `masters`, renewed every
LEASE_RENEW seconds and valid for LEASE seconds. A master whose lease has
run out is taken to be dead: any other master takes its open jobs over,
in one transaction that locks the jobs' rows (SELECT ... FOR UPDATE SKIP
LOCKED), so that two masters never take the same job, and then runs them
as its own. The times are the database server's (clock_timestamp()), so
the masters' own clocks may differ.

A master that stops cleanly gives its lease up at once. A master that
restarts under the same name (master_name()) takes its own jobs back at
start, as a lone master does.

Results are stored exactly once whichever master receives them: the store's
update takes a (job, host) row only while it is open (master/jobstore.py
record()), and then announces it (RESULTS_CHANNEL), so that the job's owner
tells the CLI that waits for it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from safcm.master.db import Database, transaction
from safcm.master.keystore import MinionKey

# Seconds a master's lease lasts: a master silent this long is taken to be
# dead and its open jobs are taken over. Long enough to ride out a loaded
# database or a paused VM; short against a job's 60 s default timeout.
LEASE = 15.0
# Seconds between renewals of the lease, and between looks for dead masters'
# jobs: a few renewals may fail before the lease runs out.
LEASE_RENEW = 3.0

# Seconds since a master of the cluster last heard a minion within which it
# counts as connected there: a few heartbeats at the default interval, plus
# the last-seen flush.
HELD_ELSEWHERE = 20.0

# The database server's clock, in unix seconds.
_NOW = "extract(epoch from clock_timestamp())"


def master_name(interface: str, return_port: int) -> str:
    """This master's name in the cluster: host name, address and return
    port, stable across restarts and distinct for masters sharing a host."""
    return f"{socket.gethostname()}/{interface}:{return_port}"


def held_elsewhere(key: MinionKey | None, now: float) -> bool:
    """True if some master of the cluster heard `key`'s minion lately (its
    last-seen time, which every master writes, is recent)."""
    return key is not None and key.last_seen is not None and now - key.last_seen < HELD_ELSEWHERE


class Cluster:
    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name

    def renew(self) -> None:
        """Hold (or take up again) this master's lease for LEASE seconds."""
        self.db.execute(
            f"INSERT INTO masters (name, lease_until) VALUES (?, {_NOW} + ?)"  # noqa: S608 - constants
            f" ON CONFLICT (name) DO UPDATE SET lease_until = {_NOW} + ?",
            (self.name, LEASE, LEASE),
        )

    def release(self) -> None:
        """Give the lease up (a clean stop): others take the open jobs over at once."""
        self.db.execute("UPDATE masters SET lease_until = 0 WHERE name = ?", (self.name,))

    def take_over(self) -> list[str]:
        """Make this master the owner of every open job whose owner's lease
        has run out; returns their jids (the caller restores them)."""
        with transaction(self.db):
            rows = self.db.execute(
                "SELECT jid, owner FROM jobs j WHERE owner <> ? AND started = 1 AND owner IN"  # noqa: S608 - constants
                f" (SELECT name FROM masters WHERE lease_until < {_NOW})"
                " AND EXISTS (SELECT 1 FROM job_hosts h WHERE h.jid = j.jid"
                " AND h.state IN ('sent', 'received'))"
                " ORDER BY jid FOR UPDATE SKIP LOCKED",
                (self.name,),
            ).fetchall()
            jids = [r[0] for r in rows]
            self.db.executemany(
                "UPDATE jobs SET owner = ? WHERE jid = ?", [(self.name, j) for j in jids]
            )
        return jids


# The notification channel of work passed between masters (payload
# "KIND JID HOST ORIGIN", or "subscribed - HOST ORIGIN"): each minion is
# connected to one master of the cluster at a time, so the master that runs a
# job reaches it through the one that holds its connection.
RELAY_CHANNEL = "safcm_relay"
# Seconds after its subscription that a minion counts as held here although
# its first heartbeat has not arrived yet (a relayed envelope may come first).
SUBSCRIBED_GRACE = 30.0
# Pairs remembered as published for another master's job, at most: the
# oldest are forgotten first (a job's receipt comes within seconds).
MAX_RELAYED = 100_000


class Relay:
    """What masters pass each other through the database: envelopes to
    publish to a minion held by another master, and that minion's receipts,
    progress and subscriptions back to the job's master. Results need no
    relay: whichever master receives one stores it, and the store announces
    it (RESULTS_CHANNEL)."""

    def __init__(
        self, db: Database, name: str, holds: Callable[[str], bool], clock: Callable[[], float]
    ) -> None:
        self.db = db
        self.name = name
        self._holds = holds
        self.clock = clock
        # Pairs this master published for another's job: their receipts and
        # progress are passed back, not refused as for a job never sent.
        self.relayed: dict[tuple[str, str], None] = {}
        self._subscribed: dict[str, float] = {}

    def holds(self, host: str) -> bool:
        """True if `host`'s connection is here (or it just subscribed here)."""
        since = self._subscribed.get(host)
        return self._holds(host) or (since is not None and self.clock() - since < SUBSCRIBED_GRACE)

    def send(self, kind: str, jid: str, host: str) -> None:
        self.db.notify(RELAY_CHANNEL, f"{kind} {jid} {host} {self.name}")

    def subscribed(self, host: str) -> None:
        """`host` subscribed here: the other masters publish its waiting envelopes (through us)."""
        self._subscribed[host] = self.clock()
        self.send("subscribed", "-", host)

    def published_for(self, jid: str, host: str) -> None:
        """We published (jid, host) for the job's master."""
        self.relayed[(jid, host)] = None
        while len(self.relayed) > MAX_RELAYED:
            del self.relayed[next(iter(self.relayed))]

    def relayed_to(self, jid: str, host: str) -> bool:
        return (jid, host) in self.relayed

    def forget(self, jid: str, host: str) -> None:
        self.relayed.pop((jid, host), None)


def parse_relay(payload: str) -> tuple[str, str, str, str] | None:
    """(kind, jid, host, origin) of a RELAY_CHANNEL payload, or None if malformed."""
    parts = payload.split(" ")
    if len(parts) != 4:
        return None
    kind, jid, host, origin = parts
    return kind, jid, host, origin
