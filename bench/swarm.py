"""The client swarm: worker processes, each holding many HTTP connections in one epoll loop.

Theory of operation.  A worker owns clients ``[first, last)`` (with a ``role``: all of them,
only the fast ones, or only the slow readers, which then read in processes of their own);
client ``i`` uses channel ``i % channels``.  It opens them with at most ``concurrency`` handshakes in flight (connect,
send the GET, read the response head), then reads bodies.  Bodies are parsed minimally:
HTTP chunked framing is undone with ``find``/slices, and published messages are recognised
by one compiled regex over complete lines (``M<seq> <send time>``; SSE carries it in a
``data:`` line).  Per delivery the work is: one ``int``/``float`` parse, one bytearray
increment (the client's ``seen`` counts, so loss and duplicates are exact), and one dict
increment in a latency histogram keyed by (second since t0, log bucket).  Probe messages
(``P<k>``) only mark the client "subscribed" for the start barrier.

WebSocket clients (``ws``) do the upgrade handshake (101), then undo the server's unmasked
frames (text, binary and continuation payloads are parsed like stream lines, the end of a
message, a frame with FIN, ending a line; a ping is answered with a masked pong of the same
payload; pongs and other frames are ignored; a close frame is a server-side close).
With ``tls`` a connection makes a non-blocking TLS handshake (no verification, no resumption)
before its request, and a read takes everything the TLS layer decrypted (epoll does not see it).
Long-poll clients read a ``Content-Length`` response and re-poll on the same connection.
A connection the server closes is reopened after a short random delay; SSE clients resume
with ``Last-Event-ID`` (the last seq they saw, ``p<k>`` after only probes), HTTP-stream
clients with ``?last=`` and the same cursor (the bench origin makes it a ``prev-id``).  The ``churn`` command makes the worker close
random clients itself at a given rate, and they resume the same way.

The parent talks to a worker over a Pipe: commands in (``step``, ``t0``, ``churn``, ``slow``,
``report``, ``stop``), ``status`` snapshots out every 0.25 s, a ``stepped`` ack, and a
``report`` per step.  A run can publish
in several steps (the saturation search): ``step`` gives the step's seqs (``base + 1 .. base + count``)
and is acknowledged before the step's publisher starts (a worker slow to read its pipe must not
reset its counts after the first deliveries came), ``t0`` its start time; the worker counts
that step alone; a delivery of an earlier
step arriving after it was counted is *stale*.  A delivery more than ``late_s`` after its
publish time is *late*: it still counts as delivered (not lost), and is reported apart with its
own latency histogram.
"""

from __future__ import annotations

import errno
import heapq
import math
import os
import random
import re
import select
import signal
import socket
import ssl
import time
from dataclasses import dataclass

from _speedups import ws_frame
from bench.procs import raise_nofile

MSG_RX = re.compile(rb"M(\d+) (\d+\.\d+)")
PROBE_RX = re.compile(rb"P(\d+)")
BUCKETS_PER_E = 20  # latency histogram: bucket b covers [e^(b/20), e^((b+1)/20)) microseconds (~5%)
SEC_SHIFT = 10

HEAD, BODY, IDLE, CONNECTING, TLS_HANDSHAKE = 0, 1, 2, 3, 4
_WANT = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
READ_SIZE = 262144  # one recv() at most
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+
PONG_MASK = b"\x37\xfa\x21\x3d"  # a client frame is masked (RFC 6455 5.3); any mask will do
EVENTS_KEPT = 12  # per client: recent opens/closes, reported for clients with loss or dups


def note(c: Client, now: float, what: str) -> None:
    """Remember a connection event of ``c`` (with its cursor then), for the loss report."""
    ev = c.events
    if ev is None:
        ev = c.events = []
    elif len(ev) >= EVENTS_KEPT:
        del ev[0]
    ev.append((round(now, 3), what, c.last or (f"p{c.probe}" if c.probe else 0)))


def sse_cursor(c: Client) -> str | None:
    """The SSE ``Last-Event-ID`` of ``c``, as a browser's EventSource keeps it: the id of the
    last event seen (message ``M<seq>`` has id ``<seq>``, probe ``P<k>`` id ``p<k>``); None
    before any.  A client that resumed with no cursor would go live and miss what was
    published while it was away (churn lost seq 1 that way: a client dropped between the last
    probe and the first message reconnected without one)."""
    if c.last:
        return str(c.last)
    if c.probe:
        return f"p{c.probe}"
    return None


def seq_runs(seen, n: int, want_zero: bool, limit: int = 10) -> list:
    """``[first, last]`` runs of seqs 1..n never seen (``want_zero``) or seen twice or more."""
    runs: list = []
    for seq in range(1, n + 1):
        v = seen[seq] if seq < len(seen) else 0
        if (v == 0) if want_zero else (v > 1):
            if runs and runs[-1][1] == seq - 1:
                runs[-1][1] = seq
            elif len(runs) < limit:
                runs.append([seq, seq])
            else:
                break
    return runs


def shift_runs(runs: list, base: int) -> list:
    """Runs of step-relative seqs as the seqs they were published with."""
    return [[a + base, b + base] for a, b in runs]


def merge_seen(mine: bytearray, other: bytes) -> bytearray:
    """Two counts of the same seqs added (each at most 255): the worker's own and the C
    reader's, for a client read by both in one step (a reconnect's first bytes come with its
    response head, to the worker)."""
    if not other:
        return mine
    if mine.count(0) == len(mine):
        out = bytearray(other)
        if len(out) < len(mine):
            out.extend(bytes(len(mine) - len(out)))
        return out
    out = bytearray(mine)
    if len(out) < len(other):
        out.extend(bytes(len(other) - len(out)))
    for i, v in enumerate(other):
        if v:
            out[i] = min(255, out[i] + v)
    return out


def bucket_value_ms(b: int) -> float:
    """The middle of latency bucket ``b``, in milliseconds."""
    return math.exp((b + 0.5) / BUCKETS_PER_E) / 1000.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    port: int
    transport: str  # stream | sse | longpoll | ws
    first: int
    last: int
    channels: int
    max_seq: int
    concurrency: int = 64
    resume: bool = True  # reconnect with a cursor (SSE Last-Event-ID, stream ?last=)
    late_s: float = 5.0  # a delivery later than this after its publish counts as late
    slow_every: int = 0  # slow readers: client i is slow when i % slow_every == 0 (0: none)
    slow_bytes_per_s: int = 2048  # what a slow reader reads per second while slowed
    slow_rcvbuf: int = 4096  # a slow reader's SO_RCVBUF
    source_addrs: int = 0  # bind client i to 127.0.0.<2 + i % n> (more ephemeral ports); 0: no
    tls: bool = False  # HTTPS / WSS: a full TLS handshake per connection (no resumption)
    # read established plain stream/SSE bodies and WebSocket frames in the C reader
    # (bench.creader), not in Python
    creader: bool = False
    # which clients of [first, last) this worker holds: "all"; "fast": those that are not slow
    # readers; "slow": only the slow readers (their trickle reads in a process of their own)
    role: str = "all"
    # the client workers' CPU scheduling policy: "normal" (SCHED_OTHER) or "batch" (SCHED_BATCH)
    sched: str = "normal"


ROLES = ("all", "fast", "slow")


def is_slow(idx: int, slow_every: int) -> bool:
    """Client ``idx`` is a slow reader (every ``slow_every``-th client; 0: none)."""
    return bool(slow_every) and idx % slow_every == 0


def role_clients(first: int, last: int, slow_every: int, role: str) -> range | list[int]:
    """The client indices of ``[first, last)`` a worker of ``role`` holds."""
    if role not in ROLES:
        raise ValueError(f"worker role must be one of {', '.join(ROLES)}, not {role!r}")
    if role == "all" or not slow_every:
        return range(first, last) if role != "slow" else []
    if role == "slow":
        return range(-(-first // slow_every) * slow_every, last, slow_every)
    return [i for i in range(first, last) if i % slow_every]


class Client:
    __slots__ = (
        "idx",
        "channel",
        "sock",
        "fd",
        "state",
        "raw",
        "left",
        "skip",
        "text",
        "seen",
        "last",
        "mode",
        "probed",
        "probe",
        "established",
        "slow",
        "muted",
        "hs",
        "events",
        "held",
    )

    def __init__(self, idx: int, channel: str, max_seq: int) -> None:
        self.idx = idx
        self.channel = channel
        self.sock = None
        self.fd = -1
        self.state = IDLE
        self.seen = bytearray(max_seq + 2)
        self.last = 0
        self.probed = False
        self.probe = 0  # the last probe seen (SSE id ``p<k>``): the cursor until a message came
        self.established = False
        self.slow = False  # a slow reader (reads at a trickle while the worker's slow mode is on)
        self.muted = False  # a slow reader not polled for input (read by the trickle instead)
        self.hs = False  # a handshake of ours is in flight (counts against concurrency)
        self.events: list | None = None  # the last EVENTS_KEPT (time, what, cursor) of this client
        self.held = False  # its body is read by the worker's C reader
        self.reset()

    def reset(self) -> None:
        self.raw = b""
        self.left = 0
        self.skip = 0
        self.text = b""
        self.mode = ""  # chunked | length | raw


def dechunk(c: Client, data: bytes) -> tuple[bytes, bool]:
    """Undo HTTP/1.1 chunked framing incrementally; return (payload, stream ended)."""
    buf = c.raw + data if c.raw else data
    out = []
    pos, n = 0, len(buf)
    while pos < n:
        if c.left:
            take = min(c.left, n - pos)
            out.append(buf[pos : pos + take])
            pos += take
            c.left -= take
            if not c.left:
                c.skip = 2
        elif c.skip:
            take = min(c.skip, n - pos)
            pos += take
            c.skip -= take
        else:
            e = buf.find(b"\r\n", pos)
            if e < 0:
                break
            size = int(buf[pos:e].split(b";", 1)[0], 16)
            pos = e + 2
            if size == 0:
                c.raw = b""
                return b"".join(out), True
            c.left = size
    c.raw = buf[pos:]
    return b"".join(out), False


def deframe(c: Client, data: bytes, pings: list[bytes] | None = None) -> tuple[bytes, bool]:
    """Undo unmasked server WebSocket frames incrementally; return (the text of the messages,
    each followed by a newline; True when a close frame came).  Text, binary and continuation
    frames are a message's text, a frame with FIN ends it; the payloads of pings are added to
    ``pings`` (the caller answers them).  bench/creader.c reads frames the same way."""
    buf = c.raw + data if c.raw else data
    out = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        size = b1 & 0x7F
        hdr = 2
        if size == 126:
            if n - pos < 4:
                break
            size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            hdr = 4
        elif size == 127:
            if n - pos < 10:
                break
            size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            hdr = 10
        if b1 & 0x80:
            hdr += 4  # a masked frame (servers do not mask; tolerated)
        if n - pos < hdr + size:
            break
        op = b0 & 0x0F
        if op <= 2:
            out.append(buf[pos + hdr : pos + hdr + size])
            if b0 & 0x80:
                out.append(b"\n")
        elif op == 9 and pings is not None:
            pings.append(buf[pos + hdr : pos + hdr + size])
        elif op == 8:
            c.raw = b""
            return b"".join(out), True
        pos += hdr + size
    c.raw = buf[pos:]
    return b"".join(out), False


def pong_frame(payload: bytes) -> bytes:
    """The client's answer to a ping of ``payload``: a pong frame, masked with ``PONG_MASK``."""
    return ws_frame(0xA, payload, mask_key=PONG_MASK)


class Worker:
    def __init__(self, cfg: WorkerConfig, pipe) -> None:
        self.cfg = cfg
        self.pipe = pipe
        self.addr = ("127.0.0.1", cfg.port)
        prefix = {"stream": "stream", "sse": "sse", "longpoll": "lp", "ws": "ws"}[cfg.transport]
        self.clients = [
            Client(i, f"c{i % cfg.channels}", cfg.max_seq)
            for i in role_clients(cfg.first, cfg.last, cfg.slow_every, cfg.role)
        ]
        self.by_idx = {c.idx: c for c in self.clients}
        self.paths = {c.channel: f"/{prefix}/{c.channel}" for c in self.clients}
        self.ep = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.pending = list(reversed(self.clients))  # never-connected clients, popped in order
        self.timers: list = []  # (when, idx) reconnects
        self.inflight = 0
        self.connected = 0
        self.probed = 0
        self.deliveries = 0
        self.rx_bytes = 0  # bytes read from the sockets, by Python or by the C reader
        self.failures = 0
        self.fail_reasons: dict[str, int] = {}  # why handshakes failed (errno, status, ...)
        self.drops = 0
        self.reconnects = 0
        self.churned = 0
        self.t_first = 0.0
        self.t_all = 0.0
        self.t0 = 0.0  # publish start: latency histogram seconds are counted from here
        self.hist: dict[int, int] = {}
        self.max_lat = 0.0
        self.base = 0  # the step's first seq is base + 1
        self.step_count = cfg.max_seq
        self.late = 0
        self.late_hist: dict[int, int] = {}  # latency bucket -> late deliveries
        self.stale = 0
        self.step_deliveries = 0
        self.last_rx = 0.0  # the time of the step's last delivery (slow readers' left out)
        self.slow_deliveries = 0
        self.churn_interval = 0.0
        self.next_churn = 0.0
        self.running = True
        for c in self.clients:
            c.slow = is_slow(c.idx, cfg.slow_every)
        self.slow_clients = [c for c in self.clients if c.slow]
        self.slow_on = False
        self.slow_reconnects = 0  # slow readers back after a cut (resumed with their cursor)
        self.hist_slow: dict[int, int] = {}  # slow readers' latencies (kept out of ``hist``)
        self.slow_drops = 0
        self.next_trickle = 0.0
        self.lp = cfg.transport == "longpoll"
        self.sse = cfg.transport == "sse"
        self.ws = cfg.transport == "ws"
        self.tls_ctx: ssl.SSLContext | None = None
        if cfg.tls:
            # the bench measures the server: no verification work here, no session resumption
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self.tls_ctx = ctx
        self.pings: list[bytes] = []  # a read's WebSocket pings, answered after it
        self.c_deliveries = 0  # the step's deliveries the C reader counted
        self.cr = None
        if cfg.creader and not cfg.tls and cfg.transport in ("stream", "sse", "ws"):
            from bench.creader import CReader

            self.cr = CReader(len(self.clients), cfg.late_s)

    # --- connections ----------------------------------------------------------------------

    def open(self, c: Client, now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if c.slow:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.cfg.slow_rcvbuf)
        if self.cfg.source_addrs:
            # one loopback source address has ~28,000 ephemeral ports to the one server port;
            # IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect, unique per 4-tuple, not
            # reserved by bind() for every destination (the machine's other benches use ports)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{2 + c.idx % self.cfg.source_addrs}", 0))
        s.setblocking(False)
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.fail(c, now, f"connect {errno.errorcode.get(err, err)}")
            return
        c.sock, c.fd, c.state, c.hs, c.muted = s, s.fileno(), CONNECTING, True, False
        note(c, now, "open")
        c.reset()
        self.by_fd[c.fd] = c
        self.ep.register(c.fd, select.EPOLLOUT)
        self.inflight += 1
        if not self.t_first:
            self.t_first = now

    def request(self, c: Client) -> bytes:
        if self.ws:
            return (
                f"GET {self.paths[c.channel]} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        extra = ""
        if self.sse:
            extra = "Accept: text/event-stream\r\n"
            cursor = sse_cursor(c) if self.cfg.resume else None
            if cursor:
                extra += f"Last-Event-ID: {cursor}\r\n"
        query = ""
        if self.cfg.transport == "stream" and self.cfg.resume:
            cursor = sse_cursor(c)  # no cursor header in HTTP streaming: the bench origin's ?last=
            if cursor:
                query = f"?last={cursor}"
        return f"GET {self.paths[c.channel]}{query} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode()

    def close(self, c: Client) -> None:
        if c.held:
            self.take_back(c)
        if c.sock is not None:
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
            self.by_fd.pop(c.fd, None)
            c.sock.close()
            c.sock = None
        if c.hs:
            c.hs = False
            self.inflight -= 1
        c.state = IDLE

    def fail(self, c: Client, now: float, why: str = "") -> None:
        """A handshake failed (refused, reset, non-200): try again shortly."""
        self.failures += 1
        self.fail_reasons[why] = self.fail_reasons.get(why, 0) + 1
        note(c, now, "failed")
        self.close(c)
        heapq.heappush(self.timers, (now + 0.2 + random.random() * 0.3, c.idx))

    def dropped(self, c: Client, now: float) -> None:
        """The server closed an established connection: reconnect (resuming) shortly."""
        self.drops += 1
        self.slow_drops += c.slow
        note(c, now, "dropped")
        self.close(c)
        heapq.heappush(self.timers, (now + 0.05 + random.random() * 0.45, c.idx))

    def on_writable(self, c: Client, now: float) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(c, now, f"connect {errno.errorcode.get(err, err)}")
            return
        if self.tls_ctx is not None:
            c.sock = self.tls_ctx.wrap_socket(
                c.sock, server_hostname="localhost", do_handshake_on_connect=False
            )
            c.state = TLS_HANDSHAKE
            self.handshake(c, now)
            return
        self.send_request(c, now)

    def handshake(self, c: Client, now: float) -> None:
        """One step of a non-blocking TLS handshake; the request goes out once it is done."""
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.ep.modify(c.fd, select.EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self.ep.modify(c.fd, select.EPOLLOUT)
            return
        except OSError:
            self.fail(c, now, "tls handshake")
            return
        self.send_request(c, now)

    def send_request(self, c: Client, now: float) -> None:
        try:
            c.sock.send(self.request(c))
        except OSError:
            self.fail(c, now, "send request")
            return
        c.state = HEAD
        self.ep.modify(c.fd, select.EPOLLIN)

    def mute(self, c: Client, on: bool) -> None:
        """Stop (or restart) polling a slow reader for input: the trickle reads it instead."""
        if c.muted != on and c.sock is not None and c.state == BODY:
            self.ep.modify(c.fd, 0 if on else select.EPOLLIN)  # HUP/ERR are still reported
            c.muted = on

    def set_slow(self, on: bool) -> None:
        self.slow_on = on
        now = time.time()
        for c in self.slow_clients:
            if c.slow:
                self.mute(c, on)
                # bytes the TLS layer decrypted already raise no epoll event: read them now
                tls = self.tls_ctx is not None and c.sock is not None and c.state == BODY
                if not on and tls and c.sock.pending():
                    self.on_readable(c, now)

    def trickle(self, now: float) -> None:
        """Every 0.1 s, each slow reader reads a tenth of its bytes per second."""
        if now < self.next_trickle:
            return
        self.next_trickle = now + 0.1
        size = max(1, self.cfg.slow_bytes_per_s // 10)
        for c in self.slow_clients:
            if c.sock is not None and c.state == BODY:
                self.mute(c, True)
                self.on_readable(c, now, size)

    def recv_tls(self, c: Client, limit: int | None) -> bytes | None:
        """What the TLS socket has decrypted, all of it or up to ``limit`` bytes (one record per
        ``recv``): b"" at EOF, None when nothing is there yet.  Without a limit nothing stays in
        the TLS layer, where epoll would not see it (a slow reader's trickle reads the rest)."""
        parts = []
        got = 0
        while limit is None or got < limit:
            try:
                data = c.sock.recv(READ_SIZE if limit is None else limit - got)
            except _WANT:
                break
            except OSError:
                data = b""
            if not data:
                if not parts:
                    return b""
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts) if parts else None

    def on_readable(self, c: Client, now: float, size: int = 0) -> None:
        """Read what is there (``size`` > 0: at most that many bytes, a slow reader's share)."""
        if self.tls_ctx is not None:
            got = self.recv_tls(c, size or None)
            if got is None:
                return
            data = got
        else:
            try:
                data = c.sock.recv(size or READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
        self.rx_bytes += len(data)
        if not data:
            if c.hs:
                self.fail(c, now, "closed before the response head")
            else:
                self.dropped(c, now)
            return
        if c.state == HEAD:
            buf = c.raw + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                c.raw = buf
                return
            head = buf[:end].lower()
            data = buf[end + 4 :]
            c.raw = b""
            ok = (b"http/1.1 101",) if self.ws else (b"http/1.1 200", b"http/1.0 200")
            if not head.startswith(ok):
                self.fail(c, now, "status " + head[9:12].decode("latin-1"))
                return
            if self.ws:
                c.mode = "ws"
            elif b"transfer-encoding: chunked" in head:
                c.mode = "chunked"
            elif b"content-length:" in head:
                c.mode = "length"
                i = head.index(b"content-length:") + 15
                c.left = int(head[i : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
            else:
                c.mode = "raw"
            c.state = BODY
            if c.hs:
                c.hs = False
                self.inflight -= 1
                if not c.established:
                    c.established = True
                    self.connected += 1
                    if self.connected == len(self.clients):
                        self.t_all = now
                else:
                    self.reconnects += 1
                    self.slow_reconnects += c.slow
            if self.cr is not None and not c.slow and c.mode != "length":
                self.hand_over(c, data, now)
                return
            if not data:
                return
        if c.mode == "ws":
            payload, ended = deframe(c, data, self.pings)
            if self.pings and not self.pong(c):
                ended = True
        elif c.mode == "chunked":
            payload, ended = dechunk(c, data)
        elif c.mode == "length":
            buf = c.raw + data
            if len(buf) < c.left:
                c.raw = buf
                return
            payload, c.raw, ended = buf[: c.left], b"", True
        else:
            payload, ended = data, False
        if payload:
            self.consume(c, payload, now)
        if ended:
            if self.lp:  # re-poll on the same connection
                c.reset()
                c.state = HEAD
                try:
                    c.sock.send(self.request(c))
                except OSError:
                    self.dropped(c, now)
            else:
                self.dropped(c, now)

    def pong(self, c: Client) -> bool:
        """Answer the pings ``deframe`` found (``self.pings``, emptied); False when the socket
        did not take a pong whole (the client is then closed, as the C reader does)."""
        frames = [pong_frame(p) for p in self.pings]
        self.pings.clear()
        for f in frames:
            try:
                if c.sock.send(f) != len(f):
                    return False
            except OSError:  # full (never: nothing else is sent), reset, or TLS wanting I/O
                return False
        return True

    # --- the C reader (bench.creader) -------------------------------------------------------

    def hand_over(self, c: Client, data: bytes, now: float) -> None:
        """``c``'s head is read: its body (a WebSocket's frames, after the 101) is the C
        reader's from now on (``data``: what came after the head in the same read)."""
        cr = self.cr
        slot = c.idx - self.cfg.first
        self.ep.unregister(c.fd)
        cr.adopt(slot, c.fd, c.mode, c.last, c.probe, c.probed)  # raw, chunked or ws
        c.held = True
        if data and cr.feed(slot, data, now) != 0:
            self.dropped(c, now)  # the stream ended (or bad framing) in the same read

    def take_back(self, c: Client) -> None:
        """The C reader gives ``c`` back (closing it, or the server closed it): its cursor."""
        c.last, c.probe, probed = self.cr.release(c.idx - self.cfg.first)
        c.held = False
        c.probed = c.probed or probed
        c.reset()

    def run_c(self, ms: int) -> None:
        """Let the C reader read its sockets until this worker's own epoll has an event (or
        ``ms`` passed); reconnect the clients whose stream the server ended."""
        closed = self.cr.run(self.ep.fileno(), ms)
        if closed:
            now = time.time()
            for slot in closed:
                self.dropped(self.by_idx[slot + self.cfg.first], now)

    def absorb(self, hists: bool) -> None:
        """Add what the C reader counted since the last call into this worker's records
        (``hists``: the histograms and every client's seen counts too, for a report)."""
        st = self.cr.take_stats()
        n = st.deliveries
        self.deliveries += n
        self.step_deliveries += n
        self.c_deliveries += n
        self.rx_bytes += st.rx_bytes
        self.stale += st.stale
        self.late += st.late
        self.probed += st.probed
        if st.max_lat > self.max_lat:
            self.max_lat = st.max_lat
        if st.last_rx > self.last_rx:
            self.last_rx = st.last_rx
        if not hists:
            return
        self.cr.take_hist(self.hist, self.late_hist)
        for slot, c in enumerate(self.clients):
            c.seen = merge_seen(c.seen, self.cr.seen(slot, len(c.seen)))
        self.cr.step(self.base, self.step_count)  # counted once: the reader's own start over

    def consume(self, c: Client, payload: bytes, now: float) -> None:
        buf = c.text + payload if c.text else payload
        cut = buf.rfind(b"\n")
        if cut < 0:
            c.text = buf
            return
        c.text = buf[cut + 1 :]
        block = buf[:cut]
        if not c.last and b"P" in block:  # a probe: until a message comes, its id is the cursor
            probes = PROBE_RX.findall(block)
            if probes:
                c.probe = int(probes[-1])
                if not c.probed:
                    c.probed = True
                    self.probed += 1
        found = MSG_RX.findall(block)
        if not found:
            return
        seen = c.seen
        # slow readers' latencies are kept apart, and they are never "late"
        hist = self.hist_slow if c.slow else self.hist
        base = int(now - self.t0) << SEC_SHIFT if self.t0 else 0
        log = math.log
        first = self.base  # seq ``first + i`` is at ``seen[i]``: the step's own numbering
        late_s = math.inf if c.slow else self.cfg.late_s
        n = 0
        for s, t in found:
            seq = int(s)
            if seq > c.last:
                c.last = seq
            i = seq - first
            if i < 1:  # a straggler of an earlier step, after that step was counted
                self.stale += 1
                continue
            if i >= len(seen):
                seen.extend(bytes(i + 1 - len(seen)))
            v = seen[i]
            if v < 255:
                seen[i] = v + 1
            lat = now - float(t)
            if lat > self.max_lat and not c.slow:
                self.max_lat = lat
            us = lat * 1e6
            b = int(log(us) * BUCKETS_PER_E) if us > 1.0 else 0
            key = base | b
            hist[key] = hist.get(key, 0) + 1
            if lat > late_s:
                self.late += 1
                self.late_hist[b] = self.late_hist.get(b, 0) + 1
            n += 1
        self.deliveries += n
        self.step_deliveries += n
        if c.slow:
            self.slow_deliveries += n
        else:
            self.last_rx = now

    # --- loop -----------------------------------------------------------------------------

    def status(self) -> dict:
        if self.cr is not None:
            self.absorb(False)
        return {
            "connected": self.connected,
            "probed": self.probed,
            "deliveries": self.deliveries,
            "rx_bytes": self.rx_bytes,
            "step_deliveries": self.step_deliveries,
            "slow_deliveries": self.slow_deliveries,
            "failures": self.failures,
            "fail_reasons": self.fail_reasons,
            "drops": self.drops,
            "reconnects": self.reconnects,
            "churned": self.churned,
            "t_first": self.t_first,
            "t_all": self.t_all,
            "live": sum(
                1 for c in self.clients if c.sock is not None and c.established and not c.hs
            ),
        }

    def command(self, msg) -> None:
        kind = msg[0]
        if kind == "step":
            self.start_step(0.0, msg[1], msg[2])
            self.pipe.send(("stepped", msg[1]))  # the parent starts publishing after every ack
        elif kind == "t0":
            self.t0 = msg[1]
            if self.cr is not None:
                self.cr.set_t0(msg[1])
        elif kind == "slow":
            self.set_slow(msg[1])
        elif kind == "churn":
            per_s = msg[1]
            self.churn_interval = 1.0 / per_s if per_s > 0 else 0.0
            self.next_churn = time.time() + self.churn_interval
        elif kind == "report":
            self.pipe.send(("report", self.report(msg[1])))
        elif kind == "stop":
            self.running = False

    def start_step(self, t0: float, base: int, count: int) -> None:
        """A new publishing step: seqs ``base + 1 .. base + count``, latency seconds from
        ``t0``; the counts of the step before are gone (the parent collected them)."""
        self.t0 = t0
        self.base = base
        self.step_count = count
        for c in self.clients:
            c.seen = bytearray(count + 2)
        if self.cr is not None:
            self.cr.step(base, count)
        self.hist = {}
        self.hist_slow = {}
        self.slow_drops = 0
        self.slow_reconnects = 0
        self.max_lat = 0.0
        self.late = 0
        self.late_hist = {}
        self.stale = 0
        self.step_deliveries = 0
        self.c_deliveries = 0
        self.last_rx = 0.0  # the time of the step's last delivery (slow readers' left out)
        self.slow_deliveries = 0

    def churn(self, now: float) -> None:
        while self.churn_interval and now >= self.next_churn:
            self.next_churn += self.churn_interval
            for _ in range(10):
                c = random.choice(self.clients)
                if c.state == BODY:
                    self.churned += 1
                    note(c, now, "churned")
                    self.close(c)
                    heapq.heappush(self.timers, (now + random.random() * 0.1, c.idx))
                    break

    def run(self) -> None:
        self.ep.register(self.pipe.fileno(), select.EPOLLIN)
        pipe_fd = self.pipe.fileno()
        by_fd = self.by_fd
        # with the C reader, the loop waits in it (it polls this epoll too), then takes what
        # is ready here without waiting
        wait = 0.05 if self.cr is None else 0.0
        by_idx = self.by_idx
        next_status = 0.0
        while self.running:
            if self.cr is not None:
                self.run_c(50)
            for fd, ev in self.ep.poll(wait, 1024):
                if fd == pipe_fd:
                    while self.pipe.poll():
                        self.command(self.pipe.recv())
                    continue
                c = by_fd.get(fd)
                if c is None:
                    continue
                now = time.time()
                if c.state == CONNECTING:
                    self.on_writable(c, now)
                elif c.state == TLS_HANDSHAKE:
                    self.handshake(c, now)
                elif ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self.on_readable(c, now)
            now = time.time()
            while self.pending and self.inflight < self.cfg.concurrency:
                self.open(self.pending.pop(), now)
            while self.timers and self.timers[0][0] <= now and self.inflight < self.cfg.concurrency:
                _, idx = heapq.heappop(self.timers)
                c = by_idx[idx]
                if c.state == IDLE:
                    self.open(c, now)
            if self.churn_interval:
                self.churn(now)
            if self.slow_on:
                self.trickle(now)
            if now >= next_status:
                next_status = now + 0.25
                self.pipe.send(("status", self.status()))
        for c in self.clients:
            if c.sock is not None:
                c.sock.close()

    def report(self, published: dict[str, int]) -> dict:
        if self.cr is not None:
            self.absorb(True)
        lost_total = dup_total = with_loss = with_dup = 0
        slow_lost = slow_dup = slow_clients = 0
        worst = None
        per_client = []
        detail = []  # which seqs, and the client's recent connections (time, what, cursor then)
        for c in self.clients:
            n = published.get(c.channel, 0)
            sl = c.seen[1 : n + 1]
            lost = sl.count(0)
            dup = sum(sl) - (n - lost) if n else 0
            lost_total += lost
            dup_total += dup
            if c.slow:
                slow_clients += 1
                slow_lost += lost
                slow_dup += dup
            with_loss += lost > 0
            with_dup += dup > 0
            if lost or dup:
                per_client.append((c.idx, lost, dup))
                if len(detail) < 20:
                    detail.append(
                        {
                            "client": c.idx,
                            "channel": c.channel,
                            "lost_seqs": shift_runs(seq_runs(c.seen, n, True), self.base),
                            "dup_seqs": shift_runs(seq_runs(c.seen, n, False), self.base),
                            "events": c.events or [],
                        }
                    )
            if worst is None or (lost + dup) > worst[1] + worst[2]:
                worst = (c.idx, lost, dup)
        return {
            "status": self.status(),
            "hist": self.hist,
            "max_lat": self.max_lat,
            "late": self.late,
            "late_hist": self.late_hist,
            "stale": self.stale,
            "last_rx": self.last_rx,
            "c_deliveries": self.c_deliveries,  # of the step's deliveries, read by the C reader
            "lost": lost_total,
            "dup": dup_total,
            "clients_with_loss": with_loss,
            "clients_with_dup": with_dup,
            "worst": worst,
            "per_client": per_client[:1000],
            "detail": detail,
            # slow readers (their deliveries are in lost/dup above too, not in hist)
            "slow": {
                "clients": slow_clients,
                "deliveries": self.slow_deliveries,
                "lost": slow_lost,
                "duplicated": slow_dup,
                "drops": self.slow_drops,
                "reconnects": self.slow_reconnects,
                "hist": self.hist_slow,
            },
        }


def worker_main(cfg: WorkerConfig, pipe) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    raise_nofile()
    apply_sched(cfg.sched)
    Worker(cfg, pipe).run()


def apply_sched(policy: str) -> None:
    """This process's CPU scheduling policy: ``normal`` (left as it is) or ``batch``
    (SCHED_BATCH: a client woken by a delivery does not preempt the server still sending to
    the others, as a client on another host cannot; the kernel's loopback receive path still
    runs inside the server's ``send()``)."""
    if policy == "batch":
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    elif policy != "normal":
        raise ValueError(f"client scheduling policy {policy!r}: normal or batch")
