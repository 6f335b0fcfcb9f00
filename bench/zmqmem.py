"""Benchmark libzmq alone: the server's memory per connected client.

    .venv/bin/python bench/zmqmem.py [--clients 1000] [--procs 2]
        [--interval 5] [--settle 15] [--only router|xpub] [--plain] [--no-zap]
        [--hwm N] [--kernel-buf BYTES] [--io-threads N] [--batch-size BYTES]
        [--malloc-arena-max N] [--max-seconds 110]

The master holds two CurveZMQ connections per minion: its XPUB (publish;
the minion's SUB subscribes to everything, the master applies a topic of
its own) and its ROUTER (return; the
minion's DEALER sends a heartbeat every few seconds and gets replies). This
measures what libzmq itself costs per such pair, with no safcm code at all:

1. A server process (a subprocess, so its RSS holds nothing but Python,
   pyzmq and what libzmq allocates): one context, a ROUTER and an XPUB,
   bound on 127.0.0.1 with the options the master sets before bind
   (master/peers.py, master/intake.py, master/publish.py,
   master/transport.py: LINGER, MAXMSGSIZE, HWMs, CURVE server, ZAP domain,
   handshake deadline, TCP keepalive, XPUB_MANUAL/VERBOSE/NODROP,
   ROUTER_MANDATORY 0), and a ZAP handler that accepts every key with its
   hex as the User-Id, as the master's does. It answers each DEALER message
   with a small reply, applies a topic of its own to each subscription
   (numbers in sequence, as master/publish.py Topics) and publishes one
   message to it (so the publish pipes have carried traffic, as the
   master's do).
2. --procs client processes holding --clients clients between them; a
   client is a CURVE SUB subscribed to everything plus a CURVE DEALER
   that sends a HEARTBEAT_BYTES message every --interval seconds.
3. The server's VmRSS before any client, once every client has had a reply
   and its published message, after --settle seconds of heartbeats, and
   after malloc_trim(0) (what glibc kept but libzmq had freed). Beside RSS,
   glibc's own count of the bytes allocated (mallinfo2: in use, and the
   heap size), which is libzmq's demand whatever the allocator keeps.
   Per client = (stage - before) / clients.

Flags change one thing each, to see what moves the figure: --only router or
xpub (one connection per client, so the split is known), --plain (NULL
mechanism: the CURVE and ZAP share), --no-zap (CURVE without the ZAP
handler), --hwm (every HWM of the server's two sockets), --kernel-buf
(SO_SNDBUF/SO_RCVBUF: kernel memory, not the process's), --io-threads,
--batch-size (ZMQ_IN/OUT_BATCH_SIZE: draft options; the run stops if this
libzmq lacks them), --malloc-arena-max (MALLOC_ARENA_MAX in the server's
environment). --hwm 1 stalls the first exchange (libzmq 4.3.5), so the run
times out; 2 is the least that completes.

Pipes age: a libzmq pipe allocates its queue in chunks of 256 messages, and
keeps the last chunk it emptied as a spare, so a connection's memory grows
once 256 messages have crossed it (after 21 minutes of heartbeats every 5
s). A short --interval (0.1) with a --settle of 40 s shows that state.

Only 127.0.0.1 is used; every wait has a deadline; all
subprocesses are stopped on exit, on error and on Ctrl-C. Figures are
printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import resource
import select
import subprocess
import sys
import time

import zmq

# The master's options (see the module docstring for where each is set).
ZMTP_HEARTBEAT_IVL_MS = 60_000  # minion/daemon.py: its SUB pings; the master does not
ZMTP_HEARTBEAT_TIMEOUT_MS = 180_000
DEAD_PEER_IDLE_S, DEAD_PEER_PROBE_S, DEAD_PEER_PROBES = 60, 30, 4  # master/transport.py
DEAD_PEER_MS = 180_000
HANDSHAKE_IVL_MS = 10_000
RETURN_RCVHWM, RETURN_SNDHWM = 2, 8  # master/intake.py
PUBLISH_HWM, PUBLISH_RCVHWM = 16, 8  # master/publish.py
# MAXMSGSIZE, bytes: a sealed result on the return socket
# (MAX_RESULT_BYTES + envelope overhead, rounded up); a subscription on the
# publish socket (PUBLISH_MAX_IN). Neither is allocated ahead: they only cap.
RETURN_MAX_IN = 4 * 1024 * 1024 + 1024
PUBLISH_MAX_IN = 300
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27
TOPIC_LENGTH = 4  # bytes, as master/publish.py TOPIC_BYTES: none prefixes another

# Message sizes, bytes: a minion's heartbeat (sealed, about 150), the
# master's heartbeat reply, and a small published envelope.
HEARTBEAT_BYTES = 150
REPLY_BYTES = 60
PUBLISHED_BYTES = 100

MAX_CLIENTS = 2000  # bounds the run's descriptors, handshakes and time
# Each client process's sockets (SUB and DEALER per client) above
# libzmq's default maximum of 1023, plus slack for its own.
SOCKETS_PER_CLIENT = 2
SOCKET_SLACK = 16
# Descriptors a process needs besides those of its connections and sockets
# (Python, the context's own mailboxes and epoll).
FD_SLACK = 256
POLL_MS = 100  # the longest any loop sleeps before it looks at its commands again
# Seconds the clients get to connect and complete one exchange: a base plus
# a share per client (each handshake is a few CURVE boxes on both sides).
READY_TIMEOUT_BASE, READY_TIMEOUT_PER_CLIENT = 10.0, 0.02
ANSWER_TIMEOUT = 10.0  # seconds the server gets to answer a command
STOP_TIMEOUT = 5.0  # seconds a subprocess gets to exit before it is killed


# -- shared --------------------------------------------------------------


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def topic(index: int) -> bytes:
    return index.to_bytes(TOPIC_LENGTH, "big")


def status_kib(field: str) -> int:
    """A field of /proc/self/status given in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc >= 2.33): every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the heaps (sbrk'd main arena and the threads' arenas)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmap'd blocks (allocations above the mmap threshold)
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes allocated and not freed, in the heaps
            "fordblks",  # bytes free in the heaps
            "keepcost",
        )
    ]


LIBC = ctypes.CDLL(None)
LIBC.mallinfo2.restype = MallInfo2
LIBC.malloc_trim.argtypes = [ctypes.c_size_t]


def memory() -> dict[str, int]:
    """The process's RSS and glibc's count of what is allocated, in KiB."""
    info = LIBC.mallinfo2()
    return {
        "rss": status_kib("VmRSS"),
        "in_use": (info.uordblks + info.hblkhd) // 1024,
        "heap": (info.arena + info.hblkhd) // 1024,
        "threads": len(os.listdir("/proc/self/task")),
    }


def say(document: dict) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def command() -> str:
    """The parent's next command, once stdin is readable; its EOF means 'quit'."""
    line = sys.stdin.readline()
    return line.strip() or "quit"


# -- server --------------------------------------------------------------


def server(spec: dict) -> None:
    """Bind, then answer the parent's commands ('memory', 'trim', 'quit')
    on stdin while serving the clients."""
    raise_fd_limit()
    ctx = zmq.Context(io_threads=spec["io_threads"])
    secret = spec["secret"].encode("ascii")
    router = xpub = zap = None
    if spec["zap"]:
        zap = ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
    ports = {}
    if spec["only"] in (None, "router"):
        router = listener(ctx, zmq.ROUTER, RETURN_MAX_IN, "return", spec)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        ports["router"] = bind(router)
    if spec["only"] in (None, "xpub"):
        xpub = listener(ctx, zmq.XPUB, PUBLISH_MAX_IN, "publish", spec)
        xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        xpub.setsockopt(zmq.XPUB_NODROP, 1)
        ports["xpub"] = bind(xpub)
    # The parent made the secret for this run; the clients need its public half.
    ports["public"] = zmq.curve_public(secret).decode("ascii") if secret else ""
    say(ports)

    poller = zmq.Poller()
    for sock in (router, xpub, zap):
        if sock is not None:
            poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    reply = b"r" * REPLY_BYTES
    published = b"p" * PUBLISHED_BYTES
    counts = {"replies": 0, "subscriptions": 0, "published": 0, "refused": 0, "handshakes": 0}
    while True:
        ready = dict(poller.poll(POLL_MS))
        if router in ready:
            for peer, _message in drain(router):
                router.send_multipart([peer, reply], zmq.NOBLOCK)
                counts["replies"] += 1
        if xpub in ready:
            for (frame,) in drain(xpub):
                if frame[:1] == b"\x01":
                    # XPUB_MANUAL: a subscription applies once we set it,
                    # to the connection it came from (the last one read).
                    counts["subscriptions"] += 1
                    given = topic(counts["subscriptions"])
                    xpub.setsockopt(zmq.SUBSCRIBE, given)
                    try:
                        xpub.send_multipart([given, published], zmq.NOBLOCK)
                    except zmq.Again:  # XPUB_NODROP and its queue is full: not published
                        counts["refused"] += 1
                    else:
                        counts["published"] += 1
        if zap in ready:
            for frames in drain(zap):
                # version, request id, domain, address, identity, mechanism, key
                user = frames[6].hex().encode("ascii") if len(frames) == 7 else b""
                zap.send_multipart([b"1.0", frames[1], b"200", b"OK", user, b""])
                counts["handshakes"] += 1
        if sys.stdin.fileno() in ready or sys.stdin in ready:
            asked = command()
            if asked == "quit":
                break
            if asked == "trim":
                LIBC.malloc_trim(0)
            say(memory() | counts)
    for sock in (router, xpub, zap):
        if sock is not None:
            sock.close(0)
    ctx.term()


def listener(ctx: zmq.Context, kind: int, max_in: int, domain: str, spec: dict) -> zmq.Socket:
    """A socket with the master's options, all set before bind (libzmq gives
    each accepted connection the options its listener had at bind time)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_in)
    if kind == zmq.ROUTER:
        sndhwm, rcvhwm = RETURN_SNDHWM, RETURN_RCVHWM
    else:
        sndhwm, rcvhwm = PUBLISH_HWM, PUBLISH_RCVHWM
    if spec["hwm"] is not None:
        sndhwm = rcvhwm = spec["hwm"]
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if spec["kernel_buf"] is not None:
        sock.setsockopt(zmq.SNDBUF, spec["kernel_buf"])
        sock.setsockopt(zmq.RCVBUF, spec["kernel_buf"])
    if spec["batch_size"] is not None:
        # Draft options: pyzmq knows their numbers, but a libzmq built
        # without the draft API refuses them (EINVAL), and the run stops.
        sock.setsockopt(zmq.IN_BATCH_SIZE, spec["batch_size"])
        sock.setsockopt(zmq.OUT_BATCH_SIZE, spec["batch_size"])
    if spec["secret"]:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, spec["secret"].encode("ascii"))
        if spec["zap"]:
            sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode("ascii"))
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, DEAD_PEER_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, DEAD_PEER_PROBE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, DEAD_PEER_PROBES)
    sock.setsockopt(zmq.TCP_MAXRT, DEAD_PEER_MS)
    return sock


def bind(sock: zmq.Socket) -> int:
    return sock.bind_to_random_port("tcp://127.0.0.1")


def drain(sock: zmq.Socket):
    """Every message waiting on `sock`, without blocking."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


# -- clients -------------------------------------------------------------


def clients(spec: dict) -> None:
    """Hold clients first..first+count-1 until stdin closes; say 'ready'
    once every one has had a reply and its published message."""
    raise_fd_limit()
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, SOCKETS_PER_CLIENT * spec["count"] + SOCKET_SLACK)
    server_key = spec["public"].encode("ascii")
    dealers: list[zmq.Socket] = []
    poller = zmq.Poller()
    waiting: set[zmq.Socket] = set()  # sockets that have not received anything yet
    for _ in range(spec["count"]):
        public, secret = zmq.curve_keypair() if server_key else (b"", b"")
        for kind, port in ((zmq.DEALER, spec.get("router")), (zmq.SUB, spec.get("xpub"))):
            if port is None:
                continue
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if server_key:
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            else:
                dealers.append(sock)
            sock.connect(f"tcp://127.0.0.1:{port}")
            poller.register(sock, zmq.POLLIN)
            waiting.add(sock)
    poller.register(sys.stdin, zmq.POLLIN)

    # Heartbeats are spread evenly over the interval, as a fleet's are; the
    # first goes at once, so the first exchange completes soon.
    heartbeat = b"h" * HEARTBEAT_BYTES
    interval = spec["interval"]
    start = time.monotonic()
    due = [start + interval * i / max(1, len(dealers)) for i in range(len(dealers))]
    for dealer in dealers:
        dealer.send(heartbeat, zmq.NOBLOCK)
    said_ready = False
    while True:
        now = time.monotonic()
        for i, dealer in enumerate(dealers):
            if due[i] <= now:
                due[i] += interval
                # Not connected yet, or its queue is full: next time.
                with contextlib.suppress(zmq.Again):
                    dealer.send(heartbeat, zmq.NOBLOCK)
        timeout = max(0, min(POLL_MS, int(1000 * (min(due, default=now + 1) - now))))
        ready = dict(poller.poll(timeout))
        for sock in ready:
            if isinstance(sock, zmq.Socket):
                for _ in drain(sock):
                    waiting.discard(sock)
        if sys.stdin.fileno() in ready or sys.stdin in ready:
            if command() == "quit":
                break
            say(memory())
        if not waiting and not said_ready:
            said_ready = True
            say({"ready": True} | memory())
    for sock in dealers:
        sock.close(0)
    ctx.destroy(0)


# -- the run -------------------------------------------------------------


class Child:
    """A subprocess spoken to in JSON lines over its stdin and stdout."""

    def __init__(self, role: str, spec: dict, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--role", role, "--spec", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read(self, deadline: float) -> dict:
        """The next JSON line, or an error once `deadline` (monotonic) passes."""
        assert self.proc.stdout is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pid {self.proc.pid} said nothing in time")
            readable, _, _ = select.select([self.proc.stdout], [], [], left)
            if readable:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"pid {self.proc.pid} exited ({self.proc.wait()})")
                return json.loads(line)

    def ask(self, command: str, timeout: float = ANSWER_TIMEOUT) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read(time.monotonic() + timeout)

    def stop(self) -> None:
        """Close its stdin (it then exits); kill it if it does not."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(STOP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def run(args: argparse.Namespace) -> None:
    hard = raise_fd_limit()
    per_client = 1 if args.only else SOCKETS_PER_CLIENT
    # The server holds one descriptor per connection; a client process two
    # per socket (its connection and the socket's mailbox).
    needed = max(args.clients, 2 * math.ceil(args.clients / args.procs)) * per_client
    if needed + FD_SLACK > hard:
        raise SystemExit(f"{needed} descriptors needed in one process, more than {hard}")
    if args.batch_size is not None:
        refused = batch_size_refused()
        if refused:
            raise SystemExit(f"--batch-size: libzmq {zmq.zmq_version()} refuses it: {refused}")
    end = time.monotonic() + args.max_seconds
    secret = "" if args.plain else zmq.curve_keypair()[1].decode("ascii")
    env = None
    if args.malloc_arena_max is not None:
        env = os.environ | {"MALLOC_ARENA_MAX": str(args.malloc_arena_max)}
    spec = {
        "secret": secret,
        "zap": not (args.plain or args.no_zap),
        "only": args.only,
        "hwm": args.hwm,
        "kernel_buf": args.kernel_buf,
        "batch_size": args.batch_size,
        "io_threads": args.io_threads,
    }
    print(f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, draft API: {zmq.has('draft')}")
    print(f"server: {json.dumps(spec | {'secret': bool(secret)})}, env MALLOC_ARENA_MAX=", end="")
    print(args.malloc_arena_max)
    children: list[Child] = []
    try:
        srv = Child("server", spec, env)
        children.append(srv)
        ports = srv.read(min(end, time.monotonic() + ANSWER_TIMEOUT))
        time.sleep(0.5)  # the I/O threads start and settle
        stages = {"before": srv.ask("memory")}
        per_proc = math.ceil(args.clients / args.procs)
        started = time.monotonic()
        for first in range(0, args.clients, per_proc):
            count = min(per_proc, args.clients - first)
            children.append(
                Child(
                    "clients",
                    ports | {"count": count, "interval": args.interval},
                )
            )
        ready_by = time.monotonic() + READY_TIMEOUT_BASE + READY_TIMEOUT_PER_CLIENT * args.clients
        client_memory = [child.read(min(end, ready_by)) for child in children[1:]]
        took = time.monotonic() - started
        print(f"{args.clients} clients connected, one exchange each, in {took:.1f} s")
        stages["connected"] = srv.ask("memory")
        time.sleep(max(0.0, min(args.settle, end - time.monotonic() - 2 * ANSWER_TIMEOUT)))
        stages["settled"] = srv.ask("memory")
        stages["trimmed"] = srv.ask("trim")
        report(args.clients, stages, client_memory, args.procs)
    finally:
        for child in reversed(children):
            child.stop()


def batch_size_refused() -> str:
    """Why this libzmq refuses ZMQ_IN_BATCH_SIZE (a draft option), or '' if it takes it."""
    if getattr(zmq, "IN_BATCH_SIZE", None) is None:
        return "pyzmq does not know the option"
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        try:
            sock.setsockopt(zmq.IN_BATCH_SIZE, 1024)
        except zmq.ZMQError as e:
            return f"{e.strerror} (built with the draft API: {zmq.has('draft')})"
    return ""


def report(count: int, stages: dict[str, dict], client_memory: list[dict], procs: int) -> None:
    before = stages["before"]
    print(
        f"{'stage':<10} {'RSS KiB':>9} {'in use KiB':>10} {'heap KiB':>9} {'thr':>4}"
        f" {'RSS/client':>10} {'in use/client':>13} {'heap/client':>11}"
    )
    for name, m in stages.items():
        print(
            f"{name:<10} {m['rss']:>9} {m['in_use']:>10} {m['heap']:>9} {m['threads']:>4}"
            f" {(m['rss'] - before['rss']) / count:>10.1f}"
            f" {(m['in_use'] - before['in_use']) / count:>13.1f}"
            f" {(m['heap'] - before['heap']) / count:>11.1f}"
        )
    settled = stages["settled"]
    print(
        f"server: replies {settled['replies']}, subscriptions {settled['subscriptions']},"
        f" published {settled['published']} (refused {settled['refused']}),"
        f" ZAP handshakes {settled['handshakes']}"
    )
    rss = sum(m["rss"] for m in client_memory)
    print(f"client processes ({procs}): RSS {rss} KiB in all, {rss / count:.1f} KiB per client")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--role", choices=["run", "server", "clients"], default="run", help=argparse.SUPPRESS
    )
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=1000, help="clients in all (at most 2000)")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of idle heartbeats")
    parser.add_argument("--only", choices=["router", "xpub"], help="one connection per client")
    parser.add_argument("--plain", action="store_true", help="NULL mechanism, no CURVE, no ZAP")
    parser.add_argument("--no-zap", action="store_true", help="CURVE without a ZAP handler")
    parser.add_argument("--hwm", type=int, help="every SNDHWM and RCVHWM of the server")
    parser.add_argument("--kernel-buf", type=int, help="SO_SNDBUF and SO_RCVBUF, bytes")
    parser.add_argument("--io-threads", type=int, default=1, help="the server context's")
    parser.add_argument("--batch-size", type=int, help="ZMQ_IN/OUT_BATCH_SIZE (draft), bytes")
    parser.add_argument("--malloc-arena-max", type=int, help="MALLOC_ARENA_MAX for the server")
    parser.add_argument("--max-seconds", type=float, default=110.0, help="the whole run's bound")
    args = parser.parse_args()
    if args.role == "server":
        server(json.loads(args.spec))
    elif args.role == "clients":
        clients(json.loads(args.spec))
    else:
        if not 1 <= args.clients <= MAX_CLIENTS:
            parser.error(f"--clients must be between 1 and {MAX_CLIENTS}")
        if not 1 <= args.procs <= args.clients:
            parser.error("--procs must be between 1 and --clients")
        run(args)


if __name__ == "__main__":
    main()
