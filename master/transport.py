"""The master's network edge: CurveZMQ with a ZAP handler, and a bounded cost
for every connection, whatever its peer sends (the zguide's "Ironhouse").

    peer --TCP--> libzmq: CURVE handshake --ZAP request--> Zap (this loop)
                                 |                           | decide(domain, key)
                                 v                           v
                      connection (fd) <---- 200 + User-Id, or 400: closed

- Both network sockets are CURVE servers. Every handshake asks the ZAP
  handler, which runs on the daemon's own loop (no thread: it reads the key
  store the loop owns). The User-Id it returns is the peer's transport key,
  hex-encoded; libzmq then stamps it on every message of that connection, so
  the daemon knows which key sent a message before it looks at the message.
- ConnectionTable counts the connections of each socket from libzmq's
  monitor events (accepted, disconnected), and decides which to cut: above
  the cap the oldest that has not said who it is (so a minion that connects
  while strangers hold every slot still gets in, and says who it is at once),
  those above the per-key cap, those that never said who they are within a
  grace period, and unknown keys that went idle. So a stranger can hold
  neither descriptors nor memory for long. A burst of connects can still
  reach the descriptor limit for a moment, libzmq accepting faster than we
  cut (master/daemon.py BURST_SHARE); libzmq's accept spins there until our
  cuts have freed descriptors, so cuts must work at the limit.
- libzmq has no call to close one connection of a socket. cut() shuts the
  TCP connection down on libzmq's own descriptor, after checking that it
  still belongs to the same peer (a descriptor number is reused once
  closed); libzmq then sees the end of the stream and cleans up. NOTE: we
  never duplicate (the descriptor limit is when cuts are needed most, and a
  dup() fails there) and never close a descriptor of libzmq's (_borrowed).

ConnectionTable is pure, with time passed in; Zap, Monitor and cut() are the
thin I/O around it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zmq
import zmq.utils.monitor

from safcm.common.loop import Loop
from safcm.common.ratelimit import PeerLog

log = logging.getLogger("safcm-master")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
ZAP_VERSION = b"1.0"
# ZAP domains: the ZAP handler learns which socket a handshake is for.
DOMAIN_PUBLISH = "publish"
DOMAIN_RETURN = "return"
DOMAIN_KEY = "key"  # the plain key port: no ZAP, but a connection table like the others

# A peer that is gone (its host crashed or was cut off, so no FIN came) is
# found by the kernel, not by libzmq: TCP keepalive probes an idle
# connection after DEAD_PEER_IDLE_S seconds, every DEAD_PEER_PROBE_S, and
# closes it after DEAD_PEER_PROBES unanswered; data left unacknowledged for
# DEAD_PEER_MS closes it too (TCP_USER_TIMEOUT, ZMQ_TCP_MAXRT). So a dead
# peer holds a descriptor three minutes at most, as with ZMTP heartbeats at
# 60 s before, without their cost: libzmq 4.3.5 cancels a connection's PING
# timeout, at the first message after each PING, by walking every timer of
# its I/O thread (poller_base_t::cancel_timer is O(n)), so the master's
# PINGs cost the square of its connections. At 6,000 minions its I/O thread
# used 13-31% of a core with the fleet idle, against 2% for all of our
# Python (bench/fanout.py prints the I/O threads' share of the idle
# master). The minions still send ZMTP PINGs; the master answers them,
# which sets no timer (the minions ask no TTL).
DEAD_PEER_IDLE_S = 60
DEAD_PEER_PROBE_S = 30
DEAD_PEER_PROBES = 4
DEAD_PEER_MS = 180_000
# A CURVE handshake must finish within this many milliseconds, or libzmq
# closes the connection: a peer that connects and says nothing is dropped.
HANDSHAKE_IVL_MS = 10_000
# A connection must identify itself within this many seconds: send a
# message (the return socket) or a subscription (the publish socket). A
# minion does both at once after connecting.
IDENTIFY_GRACE = 30.0
# An unknown key (not accepted) on the return socket may only enrol; a
# pending minion does that every heartbeat interval (60 s at most). Silent
# for longer than this, in seconds, it is cut.
UNKNOWN_IDLE = 180.0
# Seconds a peer of the key port may stay silent after its last request: a
# minion asks once and closes the connection.
KEY_PORT_IDLE = 10.0
# Connections one key may hold on one socket: a minion needs one; a few more
# cover a reconnect whose old connection has not timed out yet.
MAX_CONNECTIONS_PER_KEY = 4
# The pending/unknown keys' share of a socket's connection cap: accepted
# minions keep room even while strangers hold every slot they may.
UNKNOWN_SHARE = 0.25


@dataclass(slots=True)
class Connection:
    fd: int
    peer: tuple[str, int] | None  # the remote address, to check before a cut
    opened: float
    key: str | None = None  # hex transport key, once a message showed it
    known: bool = False  # the key is an accepted minion's
    last_active: float = 0.0
    cut: bool = False  # chosen to be cut; it stays here until libzmq reports it closed
    # What the master took from it as messages: the bytes of their frames,
    # and how many (master/backlog.py tells from them what libzmq holds).
    taken: int = 0
    frames: int = 0
    # The loop's clock when its CURVE handshake succeeded (None: not yet):
    # before, a peer may send only the handshake's few hundred bytes.
    handshaken: float | None = None


class ConnectionTable:
    """The connections of one socket, and which of them to cut. Pure.

    `idle_after` is how long, in seconds, a key that is not an accepted
    minion's may stay silent (UNKNOWN_IDLE; the key port's peers need one
    exchange, so less there).

    The counts the decisions need (connections not chosen to be cut, those
    of each key, those not an accepted minion's, those that never said who
    they are) are kept as connections come, change and go: a fleet of
    10,000 reconnecting at once must not cost 10,000 x 10,000 steps.
    """

    def __init__(self, cap: int, idle_after: float = UNKNOWN_IDLE) -> None:
        self.cap = cap
        self.idle_after = idle_after
        self.unknown_cap = max(1, int(cap * UNKNOWN_SHARE))
        self.conns: dict[int, Connection] = {}  # in the order they were accepted
        self._live = 0  # not chosen to be cut
        self._unknown = 0  # not an accepted minion's
        self._per_key: dict[str, int] = {}
        # Not chosen to be cut and not identified yet, oldest first: the
        # victims when the socket is over its cap.
        self._silent: dict[int, Connection] = {}

    def __len__(self) -> int:
        return len(self.conns)

    def _count(self, c: Connection, sign: int) -> None:
        """Add a connection to the counts (sign 1) or take it out (-1)."""
        if not c.cut:
            self._live += sign
            if c.key is None:
                if sign > 0:
                    self._silent[c.fd] = c
                elif self._silent.get(c.fd) is c:
                    del self._silent[c.fd]
        if not c.known:
            self._unknown += sign
        if c.key is not None:
            held = self._per_key.get(c.key, 0) + sign
            if held:
                self._per_key[c.key] = held
            else:
                del self._per_key[c.key]

    def _mark_cut(self, c: Connection) -> None:
        if not c.cut:
            self._count(c, -1)
            c.cut = True
            self._count(c, 1)

    def opened(self, fd: int, peer: tuple[str, int] | None, now: float) -> Connection | None:
        """Record a new connection; returns the one to cut if the socket is over
        its cap: the oldest that has not said who it is, else this new one."""
        self.closed(fd)  # a reused number: the old connection is gone
        new = self.conns[fd] = Connection(fd, peer, now, last_active=now)
        self._count(new, 1)
        if self._live <= self.cap:
            return None
        victim = next(iter(self._silent.values()), new)
        self._mark_cut(victim)
        return victim

    def closed(self, fd: int) -> None:
        old = self.conns.pop(fd, None)
        if old is not None:
            self._count(old, -1)

    def unknown(self) -> int:
        """Connections that are not (yet) an accepted minion's."""
        return self._unknown

    def room_for_unknown(self) -> bool:
        """May the connection asking finish its handshake under a key that is
        not accepted? It is counted already: Peers.room_for_unknown() reads
        the accept events first, which libzmq queues before the handshake
        that leads to the ZAP request."""
        return self._unknown <= self.unknown_cap

    def active(self, fd: int, key: str, known: bool, now: float) -> bool:
        """A message or subscription came on `fd` from `key`; True if the
        connection must be cut (its key holds too many connections)."""
        conn = self.conns.get(fd)
        if conn is None:  # its accept event is still on the way
            return False
        conn.last_active = now
        if conn.key == key and conn.known == known:
            return False
        self._count(conn, -1)
        changed_key = conn.key != key
        conn.key, conn.known = key, known
        self._count(conn, 1)
        return changed_key and self._per_key[key] > MAX_CONNECTIONS_PER_KEY

    def holds(self, key: str) -> bool:
        """Whether transport key `key` (hex) has a connection here that said who it is."""
        return self._per_key.get(key, 0) > 0

    def handshaken(self, fd: int, now: float) -> None:
        conn = self.conns.get(fd)
        if conn is not None:
            conn.handshaken = now

    def took(self, fd: int, size: int) -> None:
        """A frame of `size` bytes was read from connection `fd`."""
        conn = self.conns.get(fd)
        if conn is not None:
            conn.taken += size
            conn.frames += 1

    def forget_key(self, key: str) -> list[Connection]:
        """The connections of a key that was rejected or deleted: to cut."""
        return self._cutting([c for c in self.conns.values() if c.key == key])

    def stale(self, now: float) -> list[Connection]:
        """Connections to cut now: never identified within IDENTIFY_GRACE, or
        an unknown key silent for idle_after."""
        return self._cutting([c for c in self.conns.values() if not c.cut and self._stale(c, now)])

    def _stale(self, c: Connection, now: float) -> bool:
        if c.key is None:
            return now - c.opened > IDENTIFY_GRACE
        return not c.known and now - c.last_active > self.idle_after

    def _cutting(self, conns: list[Connection]) -> list[Connection]:
        """Mark connections as chosen to be cut, so none is chosen twice."""
        for c in conns:
            self._mark_cut(c)
        return conns


def cut(conn: Connection) -> bool:
    """Shut one TCP connection of a libzmq socket down; True if it was done.

    Only if the descriptor still has the peer address recorded when the
    connection was accepted: the number may already belong to another
    connection or file. libzmq's I/O thread may close and reuse the number
    between that check and the shutdown; the new connection would have to
    come from the same address and port, which a closed connection's peer
    does not reuse so soon.
    """
    if conn.peer is None:
        return False
    try:
        with _borrowed(conn.fd) as sock:
            if sock.getpeername()[:2] != conn.peer:
                return False
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed, not a socket, or no longer connected
        return False
    return True


def peer_of(fd: int) -> tuple[str, int] | None:
    """The remote (address, port) of a connection's descriptor, or None."""
    try:
        with _borrowed(fd) as sock:
            return sock.getpeername()[:2]
    except OSError:
        return None


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """A socket object on libzmq's descriptor `fd` itself, not on a duplicate:
    it needs no free descriptor. detach() on the way out, so neither we nor
    the garbage collector ever close it: the descriptor stays libzmq's.
    OSError if `fd` is not an open socket."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


class Monitor:
    """Feeds one socket's monitor events (accepted, disconnected) into its table."""

    EVENTS = (
        zmq.EVENT_ACCEPTED
        | zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_DISCONNECTED
        | zmq.EVENT_CLOSED
    )

    def __init__(
        self,
        sock: zmq.Socket,
        table: ConnectionTable,
        loop: Loop,
        name: str,
        clock: Callable[[], float],
        peer_log: PeerLog,
    ) -> None:
        self.table = table
        self.peer_log = peer_log
        self.loop = loop
        self.name = name
        self.clock = clock
        self.cuts = 0
        self.pair = sock.get_monitor_socket(self.EVENTS)
        loop.add_reader(self.pair, self.on_event)

    def on_event(self) -> None:
        while True:
            try:
                frames = self.pair.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = zmq.utils.monitor.parse_monitor_message(frames)
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                victim = self.table.opened(fd, peer_of(fd), self.clock())
                if victim is not None:
                    self.cut(victim, "the socket is at its connection cap")
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.table.handshaken(fd, self.clock())
            else:
                self.table.closed(fd)

    def cut(self, conn: Connection, reason: str) -> None:
        if cut(conn):
            self.cuts += 1
            self.peer_log.log(
                logging.DEBUG,
                "cut a connection to the %s socket from %s: %s",
                self.name,
                conn.peer,
                reason,
            )

    def close(self) -> None:
        self.loop.remove_reader(self.pair)
        self.pair.close(0)


class Zap:
    """The ZAP handler: answers libzmq's authentication requests on the loop.

    `decide(domain, address, key)` returns the User-Id to stamp on the
    connection's messages, or None to refuse the handshake.
    """

    def __init__(
        self, ctx: zmq.Context, loop: Loop, decide: Callable[[str, str, bytes], str | None]
    ) -> None:
        self.loop = loop
        self.decide = decide
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        loop.add_reader(self.sock, self.on_request)

    def on_request(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.sock.send_multipart(self._answer(frames))

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        # version, request id, domain, address, identity, mechanism, credentials...
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            return [ZAP_VERSION, frames[1] if len(frames) > 1 else b"", b"500", b"bad", b"", b""]
        request_id, domain, address, mechanism = frames[1], frames[2], frames[3], frames[5]
        if mechanism != b"CURVE" or len(frames) != 7 or len(frames[6]) != 32:
            return [ZAP_VERSION, request_id, b"400", b"CURVE only", b"", b""]
        try:
            user = self.decide(
                domain.decode("ascii", "replace"), address.decode("ascii", "replace"), frames[6]
            )
        except Exception:  # a bug refuses one handshake, never stops the handler
            log.exception("ZAP handler failed; refusing the handshake")
            user = None
        if user is None:
            return [ZAP_VERSION, request_id, b"400", b"refused", b"", b""]
        return [ZAP_VERSION, request_id, b"200", b"OK", user.encode("ascii"), b""]

    def close(self) -> None:
        self.loop.remove_reader(self.sock)
        self.sock.close(0)


def curve_server(sock: zmq.Socket, secret: bytes, domain: str) -> None:
    """Make `sock` a CURVE server that asks the ZAP handler under `domain`,
    with the deadlines of every network socket (peer_deadlines)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode("ascii"))
    peer_deadlines(sock)


def peer_deadlines(sock: zmq.Socket) -> None:
    """A handshake deadline, and dead peers found by the kernel (DEAD_PEER_*)."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, DEAD_PEER_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, DEAD_PEER_PROBE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, DEAD_PEER_PROBES)
    sock.setsockopt(zmq.TCP_MAXRT, DEAD_PEER_MS)
