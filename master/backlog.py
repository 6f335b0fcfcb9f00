"""What a peer makes libzmq keep for the master, per connection, and when that
is too much.

libzmq keeps every frame of a multipart message until its last frame has
come, and nothing bounds their count: ZMQ_MAXMSGSIZE limits one frame, and
the queue limits (HWM) count whole messages. On the plain key port a
stranger grew the master by 6.3 GiB in 8 s that way (the key port now reads
its own bytes: master/zmtpnull.py). The return socket must let an unknown
key finish its handshake, for it may enrol (DESIGN.md section 4), and so
anyone with a key of their own can do the same there; an accepted minion is
an untrusted host too.

libzmq shows no queue of a connection, but the kernel shows what it read:
the bytes received on the TCP connection (TCP_INFO's tcpi_bytes_received)
less those still unread in its socket (SIOCINQ). Less the messages the
master took from that connection, and the wire's own bytes (the handshake,
each frame's header and box), the rest waits inside libzmq: waiting(). A
connection whose waiting bytes pass its budget is cut (to_cut()): an
accepted minion may have RETURN_RCVHWM whole results queued and one more on
its way; a connection in its handshake only that, and one of any other key
only enrolment requests; and all strangers together STRANGERS_WAITING_MAX.

Reading a connection's counters is two syscalls (about 3 us with the
arithmetic): too many to
read 10,000 connections often. The master's own size is one read of
/proc/self/statm: BacklogWatch looks at it every WATCH_INTERVAL and reads
every connection when it grew by GROWTH_TRIGGER, and every connection once
each SWEEP_INTERVAL in any case. So a flood is cut within about
WATCH_INTERVAL of growing the master by GROWTH_TRIGGER.

The decisions are pure (time and sizes passed in); probe() and rss_bytes()
are the two reads.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from safcm.master.transport import Connection

# Bytes of the wire a connection may have sent beyond its messages' bodies:
# the greeting and a CURVE handshake (HELLO 200, WELCOME's reply INITIATE
# with its metadata: about 1 KiB), with room.
HANDSHAKE_BYTES = 4096
# Bytes of the wire per message taken: a ZMTP frame header (at most 9) and
# a CURVE MESSAGE command's name, nonce, flags and box (33).
FRAME_OVERHEAD = 64
# Bytes per second of connection age for what libzmq answers itself: a
# minion's ZMTP PING (about 40 bytes each, every ZMTP_HEARTBEAT_IVL_MS = 60 s),
# with room.
QUIET_BYTES_PER_S = 8.0
# Seconds between looks at the master's size, and its growth in bytes since
# the last read of every connection that makes them be read again at once.
# A stranger on loopback sent 256 MiB in 0.2 s: at 1.3 GB/s, 10 ms is 13 MiB
# more before the look (issue 8 allows stranger attacks 50 MiB). A look is
# one read of /proc/self/statm (about 15 us): 0.15% of a core.
WATCH_INTERVAL = 0.01
GROWTH_TRIGGER = 8 * 1024 * 1024
# Seconds between reads of every connection whatever the size did.
SWEEP_INTERVAL = 10.0
# Seconds after a cut before the C heap is asked to give back what libzmq
# freed (its I/O thread closes the connection meanwhile): 64 connections of
# a stranger's unfinished frames left the master 64 MiB larger without it.
GIVE_BACK_AFTER = 0.5
# Connections read in one loop turn: about 3 us each (two syscalls, and the
# arithmetic), so about 3 ms of the loop at a time. 4,000 held the loop for
# 95.8 ms at 4,000 minions on this 2-core machine with its swarms busy
# (bench/fanout.py), against the loop's 50 ms budget.
SWEEP_SLICE = 1000
# Bytes a connection may have waiting before its CURVE handshake is over
# (it sends a HELLO and an INITIATE of a few hundred bytes), and once it said
# who it is, if its key is not accepted (it may only enrol: a request of a
# few hundred bytes).
UNKNOWN_WAITING_MAX = 64 * 1024
# Seconds after its handshake a connection may take to say who it is before
# what it has waiting counts as a stranger's: a minion sends a hello first,
# but a result may be queued right behind it before the master reads it.
IDENTIFY_SOON = 1.0
# Bytes all connections of a socket that are not an accepted minion's may
# have waiting together: beyond, the largest are cut. A stranger's whole
# share of the master's memory (issue 8: 50 MiB for stranger attacks).
STRANGERS_WAITING_MAX = 16 * 1024 * 1024

# struct tcp_info (linux/tcp.h): tcpi_bytes_received is the u64 at this
# offset (after the u8s, 24 u32s, pacing rates and tcpi_bytes_acked).
_BYTES_RECEIVED_AT = 128
_TCP_INFO_BYTES = _BYTES_RECEIVED_AT + 8


def waiting(received: int, unread: int, conn: Connection, now: float) -> int:
    """Bytes of connection `conn` that libzmq holds and the master has not
    taken: at most this many (the wire's own bytes are allowed for
    generously, so an honest peer never counts against itself)."""
    wire = HANDSHAKE_BYTES + conn.frames * FRAME_OVERHEAD
    wire += int(max(0.0, now - conn.opened) * QUIET_BYTES_PER_S)
    return received - unread - conn.taken - wire


def to_cut(
    held: list[tuple[Connection, int]], known_max: int, now: float
) -> list[tuple[Connection, str]]:
    """Which connections of a socket to cut, and why, from each one's bytes
    waiting: an accepted minion's beyond `known_max`; one still in its
    handshake, or of a key not accepted once it said so, beyond
    UNKNOWN_WAITING_MAX; one that has not said who it is since its handshake
    beyond `known_max`. Then the largest of those not an accepted minion's
    (counting one that has not said who it is only after IDENTIFY_SOON)
    while they hold more than STRANGERS_WAITING_MAX together."""
    cuts: list[tuple[Connection, str]] = []
    strangers: list[tuple[int, Connection]] = []
    for conn, held_bytes in held:
        unidentified = conn.key is None and conn.handshaken is not None
        limit = known_max if conn.known or unidentified else UNKNOWN_WAITING_MAX
        if held_bytes > limit:
            reason = f"{held_bytes} bytes of unfinished messages wait, more than {limit}"
            cuts.append((conn, reason))
        elif conn.known or held_bytes <= 0:
            continue
        elif not unidentified or now - (conn.handshaken or 0.0) >= IDENTIFY_SOON:
            # (one not identified yet counts after a while: its hello may
            # have a result right behind it)
            strangers.append((held_bytes, conn))
    total = sum(n for n, _ in strangers)
    for n, conn in sorted(strangers, key=lambda s: -s[0]):
        if total <= STRANGERS_WAITING_MAX:
            break
        total -= n
        cuts.append(
            (conn, f"{n} bytes wait, and keys not accepted hold more than {STRANGERS_WAITING_MAX}")
        )
    return cuts


def probe(fd: int) -> tuple[int, int] | None:
    """(bytes received, bytes unread) of TCP connection `fd`; None if it is
    gone or not a TCP socket. Never closes `fd`: libzmq owns it."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
        unread = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, unread)
    except OSError:
        return None
    finally:
        sock.detach()
    if len(info) < _TCP_INFO_BYTES:
        return None  # a kernel older than 4.1 has no such counter
    received = struct.unpack_from("<Q", info, _BYTES_RECEIVED_AT)[0]
    return received, struct.unpack("<i", unread)[0]


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """The master's resident size: one read of /proc/self/statm."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class BacklogWatch:
    """When to read every connection: when the master grew by GROWTH_TRIGGER
    since they were last read (or since its smallest size after that), or
    SWEEP_INTERVAL passed. Pure: times and sizes are passed in."""

    def __init__(self, now: float, size: int) -> None:
        self.base = size  # at the last read of every connection, or less since
        self.next_sweep = now + SWEEP_INTERVAL

    def look(self, now: float, size: int) -> bool:
        """The master's size now; True if every connection must be read."""
        if size - self.base >= GROWTH_TRIGGER or now >= self.next_sweep:
            self.base = size
            self.next_sweep = now + SWEEP_INTERVAL
            return True
        self.base = min(self.base, size)
        return False
