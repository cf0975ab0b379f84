"""What permessage-deflate costs the edge at fan-out: N WebSocket clients on one channel, M
published messages, the edge's CPU seconds with every client compressed vs none.

    .venv/bin/python -m bench.wsdeflate --clients 1000 --messages 200 --size 2000

Each mode starts its own gripcast (``gripcast run --edges 1``, ``allow_compression = true`` in
both, so only the clients' offer differs) and the bench origin (``/ws/c0`` routed ``over_http``),
opens the clients (raw sockets; with ``--compressed`` they offer ``permessage-deflate``), then
publishes M compressible JSON-like messages through the HTTP API and reads until every client
has all M.  The edge's CPU (utime + stime from /proc, its process only) is sampled around that
publishing phase.  Because the edge answers with ``server_no_context_takeover``, a published
message is compressed once per message (not once per client), so the compressed run should
cost about the same edge CPU as the plain one while sending fewer bytes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import selectors
import socket
import tempfile
import time

import httpx

from bench.origin import Origin
from bench.procs import cpu_s, raise_nofile
from bench.targets import GripcastTarget

OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


class Reader:
    """One client socket past the handshake: counts whole frames, notes RSV1, sums bytes."""

    __slots__ = ("sock", "buf", "frames", "rsv1", "bytes")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.frames, self.rsv1, self.bytes = sock, b"", 0, 0, 0

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        buf = self.buf + data
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                n, at = int.from_bytes(buf[at : at + 2], "big"), at + 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                n, at = int.from_bytes(buf[at : at + 8], "big"), at + 8
            if len(buf) - at < n:
                break
            if b0 & 0x0F in (1, 2):
                self.frames += 1
                self.rsv1 += bool(b0 & 0x40)
            pos = at + n
        self.buf = buf[pos:]


def connect(port: int, compressed: bool) -> Reader:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16))
    s.sendall(
        b"GET /ws/c0 HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n"
        + (OFFER if compressed else b"")
        + b"\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head[:200])
    if compressed != (b"permessage-deflate" in head):
        raise AssertionError("compression not negotiated as expected: " + head.decode())
    s.setblocking(False)
    r = Reader(s)
    if rest:
        r.feed(rest)
    return r


_WORDS = (
    "price bid ask symbol volume open close high low trade market order book depth spread "
    "level quote venue time stamp buyer seller size filled partial cancel amend status"
).split()


def message(i: int, size: int) -> str:
    """A JSON-ish text of ``size`` bytes, different for each ``i`` (compresses about 4:1)."""
    rnd = random.Random(i)
    parts = []
    n = 0
    while n < size:
        w = f'"{rnd.choice(_WORDS)}": {rnd.randint(0, 99999)}, '
        parts.append(w)
        n += len(w)
    return "".join(parts)[:size]


def run_mode(args: argparse.Namespace, compressed: bool) -> dict:
    origin = Origin().start()
    with tempfile.TemporaryDirectory(prefix="bench-wsdeflate-") as tmp:
        target = GripcastTarget(origin.port, 1, tmp)
        with open(target.config, "a") as f:
            f.write("allow_compression = true\n")
        try:
            target.start()
            readers = [connect(target.client_port, compressed) for _ in range(args.clients)]
            sel = selectors.DefaultSelector()
            for r in readers:
                sel.register(r.sock, selectors.EVENT_READ, r)
            time.sleep(0.5)  # let the subscriptions settle (the last OPEN's subscribe)
            edge = target.edge_pids()[0]
            cpu0, t0 = cpu_s(edge), time.monotonic()
            want = args.messages
            client = httpx.Client(base_url=target.publish_url, timeout=30)
            sent = 0
            deadline = time.monotonic() + args.timeout
            while True:
                if sent < want:
                    batch = [
                        {
                            "channel": "c0",
                            "formats": {"ws-message": {"content": message(i, args.size)}},
                        }
                        for i in range(sent, min(want, sent + args.batch))
                    ]
                    client.post("/publish/", json={"items": batch}).raise_for_status()
                    sent += len(batch)
                for k, _ in sel.select(0.05):
                    r = k.data
                    try:
                        data = r.sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise ConnectionError("a client was dropped")
                    r.feed(data)
                if sent == want and all(r.frames >= want for r in readers):
                    break
                if time.monotonic() > deadline:
                    got = sum(r.frames for r in readers)
                    raise TimeoutError(f"{got} of {want * len(readers)} frames")
            wall, cpu = time.monotonic() - t0, cpu_s(edge) - cpu0
            client.close()
            for r in readers:
                r.sock.close()
            return {
                "mode": "compressed" if compressed else "plain",
                "clients": args.clients,
                "messages": want,
                "edge_cpu_s": round(cpu, 3),
                "wall_s": round(wall, 3),
                "bytes_received": sum(r.bytes for r in readers),
                "compressed_frames": sum(r.rsv1 for r in readers),
            }
        finally:
            target.stop()
            origin.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--size", type=int, default=2000, help="bytes per message")
    p.add_argument("--batch", type=int, default=10, help="items per publish request")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--repeat", type=int, default=1, help="runs of each mode (alternating)")
    args = p.parse_args(argv)
    raise_nofile()
    rows = []
    for _ in range(args.repeat):
        for compressed in (False, True):
            rows.append(run_mode(args, compressed))
            print(json.dumps(rows[-1]), flush=True)
    for mode in ("plain", "compressed"):
        cpu = [r["edge_cpu_s"] for r in rows if r["mode"] == mode]
        wire = [r["bytes_received"] for r in rows if r["mode"] == mode]
        print(f"{mode:>10}: edge CPU {min(cpu):.2f} s (best of {len(cpu)}), {min(wire)} bytes")


if __name__ == "__main__":
    main()
