"""Who is at the other end of the master's network sockets.

The connection tables of the three network sockets (master/transport.py),
which connections to cut, the accepted minions' public keys as objects, and
their presence. Presence comes only from authenticated heartbeats: a minion
counts as connected while its heartbeats keep coming, never because of an
address. Shared by the parts of the daemon that face the network
(master/publish.py, master/intake.py, master/keys.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import zmq

from safcm.common.crypto import PublicKeys
from safcm.common.errors import SafcmError
from safcm.common.loop import Loop
from safcm.common.memory import give_back
from safcm.common.ratelimit import PeerLog
from safcm.master.backlog import GIVE_BACK_AFTER, SWEEP_SLICE, probe, to_cut, waiting
from safcm.master.facts import HostFacts
from safcm.master.keystore import KeyStore, MinionKey
from safcm.master.transport import (
    DOMAIN_PUBLISH,
    KEY_PORT_IDLE,
    UNKNOWN_IDLE,
    Connection,
    ConnectionTable,
    Monitor,
    curve_server,
    peer_deadlines,
)

log = logging.getLogger("safcm-master")

# A minion counts as connected while its last heartbeat is younger than this
# many of its heartbeat intervals (it reports its interval in each heartbeat).
LIVENESS = 3
# Heartbeat intervals (the minion's) a connected minion may hold no
# subscription on the publish socket before it counts as deaf (deaf()): it
# subscribes as soon as its enrol reply says it is accepted, and reconnects
# both sockets together.
SUBSCRIBE_GRACE = 2


@dataclass(slots=True)
class Presence:
    last_seen: float  # monotonic
    interval: float  # the minion's heartbeat interval, seconds (at most MAX_HEARTBEAT_INTERVAL)
    busy: str | None = None  # the job it said it is applying
    answered: float = -math.inf  # monotonic: when a heartbeat of it was last answered
    since: float = -math.inf  # monotonic: its first heartbeat since it was last not connected


class Peers:
    def __init__(self, ctx: zmq.Context, loop: Loop, keystore: KeyStore, peer_log: PeerLog) -> None:
        self.ctx = ctx
        self.loop = loop
        self.keystore = keystore
        self.peer_log = peer_log
        self.public: dict[str, PublicKeys] = {}  # accepted minions' keys, as objects
        self.presence: dict[str, Presence] = {}
        # What each minion last reported about its host (master/facts.py):
        # each value is replaced whole, never changed, so a run's prepare
        # thread may keep a shallow copy.
        self.facts: dict[str, HostFacts] = {}
        self.tables: dict[str, ConnectionTable] = {}
        self.monitors: list[Monitor] = []
        self._sweeping = False  # a cut_waiting() reads connections

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close()

    def bind(
        self,
        kind: int,
        address: str,
        max_in: int,
        cap: int,
        domain: str,
        curve_secret: bytes | None,
        options: dict[int, int] | None = None,
    ) -> zmq.Socket:
        """A socket bound to `address`, with its connection table and monitor;
        a CURVE server under `domain` unless `curve_secret` is None (plain).
        `options` are set before it binds: libzmq gives each connection it
        accepts the options its listener had at bind time, so a queue limit
        (SNDHWM, RCVHWM) set after bind() would never apply to any peer."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_in)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if curve_secret is not None:
            curve_server(sock, curve_secret, domain)
        else:
            peer_deadlines(sock)
        idle = KEY_PORT_IDLE if curve_secret is None else UNKNOWN_IDLE
        table = self.tables[domain] = ConnectionTable(cap, idle)
        self.monitors.append(
            Monitor(sock, table, self.loop, domain, self.loop.clock, self.peer_log)
        )
        try:
            sock.bind(address)
        except zmq.ZMQError as e:
            sock.close(0)
            raise SafcmError(f"cannot listen on {address}: {e.strerror}") from e
        return sock

    def room_for_unknown(self, domain: str) -> bool:
        """For the ZAP handler: may one more connection of a key not accepted
        finish its handshake on `domain`'s socket? The monitor's events are
        read first, so the count includes the asking connection whatever
        order the loop found the two sockets readable in (a fleet enrolling
        at once saw its room off by one, and a test at the edge flaky)."""
        for monitor in self.monitors:
            if monitor.name == domain:
                monitor.on_event()
        return self.tables[domain].room_for_unknown()

    def minion_keys(self, sender: str) -> PublicKeys | None:
        """The keys a sealed message from `sender` must be signed with: accepted ones only."""
        keys = self.public.get(sender)
        if keys is None:
            key = self.keystore.accepted(sender)
            if key is None or key.public is None:
                return None
            keys = self.public[sender] = key.public
        return keys

    def subscribed(self, host: str) -> bool:
        """Whether the accepted minion `host` holds a connection to the publish
        socket that subscribed: without one, no job reaches it."""
        keys = self.minion_keys(host)
        return keys is not None and self.tables[DOMAIN_PUBLISH].holds(keys.curve.hex())

    def deaf(self, host: str) -> bool:
        """Connected for SUBSCRIBE_GRACE heartbeat intervals or longer and
        not subscribed: a minion that cannot reach the publish port (a
        firewall that lets the return port through), or that failed to
        open its socket there."""
        seen = self.presence.get(host)
        return (
            seen is not None
            and self.connected(host)
            and self.loop.clock() - seen.since >= SUBSCRIBE_GRACE * seen.interval
            and not self.subscribed(host)
        )

    def connected(self, host: str) -> bool:
        seen = self.presence.get(host)
        return seen is not None and self.loop.clock() - seen.last_seen < LIVENESS * seen.interval

    def forget(self, key: MinionKey) -> None:
        """A key stopped being accepted: drop what was kept for it, and cut its connections."""
        self.public.pop(key.id, None)
        self.presence.pop(key.id, None)
        # Its facts too: what a key no longer accepted said is not used, and
        # the minion states them again when it is accepted (again).
        self.facts.pop(key.id, None)
        self.cut_key(key)

    def cut_stale(self) -> None:
        now = self.loop.clock()
        for monitor in self.monitors:
            for conn in monitor.table.stale(now):
                monitor.cut(conn, "idle, or never said who it is")

    def cut_waiting(self, budgets: dict[str, int]) -> None:
        """Cut the connections that make libzmq hold more than they may
        (master/backlog.py): of each socket named in `budgets`, with an
        accepted minion's budget there. Read SWEEP_SLICE connections a loop
        turn (10,000 minions hold 20,000, about 60 ms of reads in 20
        turns); decided once all are read. One sweep at a time."""
        if self._sweeping:
            return
        self._sweeping = True
        todo = [
            (monitor, conn)
            for monitor in self.monitors
            if monitor.name in budgets
            for conn in monitor.table.conns.values()
        ]
        self._read_waiting(todo, budgets, {}, 0)

    def _read_waiting(
        self,
        todo: list[tuple[Monitor, Connection]],
        budgets: dict[str, int],
        held: dict[Monitor, list[tuple[Connection, int]]],
        start: int,
    ) -> None:
        """One slice of cut_waiting()'s sweep, from `start`; the next one a
        loop turn later. A method, not a closure that schedules itself: that
        closure was a reference cycle, which kept the list of every
        connection until a full garbage collection."""
        now = self.loop.clock()
        for monitor, conn in todo[start : start + SWEEP_SLICE]:
            got = None if conn.cut else probe(conn.fd)
            if got is not None:
                held.setdefault(monitor, []).append((conn, waiting(*got, conn, now)))
        if start + SWEEP_SLICE < len(todo):
            following = start + SWEEP_SLICE
            self.loop.call_later(0.0, lambda: self._read_waiting(todo, budgets, held, following))
            return
        self._sweeping = False
        now = self.loop.clock()
        for monitor, found in held.items():
            self._cut_held(monitor, to_cut(found, budgets[monitor.name], now))

    def _cut_held(self, monitor: Monitor, cuts: list[tuple[Connection, str]]) -> None:
        if cuts:
            # libzmq frees what it held once its I/O thread closed them;
            # then the heap gives it back (else glibc keeps it for good).
            self.loop.call_later(GIVE_BACK_AFTER, give_back)
        for conn, reason in cuts:
            if conn.cut:
                continue
            if conn.handshaken is None:
                who = "in its handshake"
            elif conn.key is None:
                who = "not identified yet"
            else:
                who = f"key {conn.key[:16]}" + ("" if conn.known else ", not accepted")
            self.peer_log.warning(
                "cut a connection to the %s socket from %s (%s): %s",
                monitor.name,
                conn.peer,
                who,
                reason,
            )
            monitor.cut(conn, reason)

    def cut_key(self, key: MinionKey) -> None:
        """Close every connection of a key that is no longer accepted."""
        if key.curve_pub is None:
            return
        for monitor in self.monitors:
            for conn in monitor.table.forget_key(key.curve_pub.hex()):
                monitor.cut(conn, f"the key of {key.id} is no longer accepted")

    def cut_fd(self, domain: str, fd: int, reason: str) -> None:
        for monitor in self.monitors:
            conn = monitor.table.conns.get(fd)
            if monitor.name == domain and conn is not None:
                monitor.cut(conn, reason)

    def noted(self, domain: str, frame: zmq.Frame, known: bool) -> str | None:
        """The transport key (hex) that sent `frame`, noted in the socket's
        table; None if the connection must go (and it was cut)."""
        key = user_id(frame)
        return key if self.note(domain, frame.get(zmq.SRCFD), key, known) else None

    def note(self, domain: str, fd: int, key: str, known: bool) -> bool:
        """A message came on connection `fd` of the socket from transport key
        `key` (hex); noted in the socket's table. False if the connection
        must go (and it was cut)."""
        if self.tables[domain].active(fd, key, known, self.loop.clock()):
            self.cut_fd(domain, fd, "its key holds too many connections")
            return False
        return True


def user_id(frame: zmq.Frame) -> str:
    """The User-Id our ZAP handler gave the frame's connection: the peer's
    transport key, in hex. (Named as bytes, the property is typed str.)"""
    return frame.get(b"User-Id")
