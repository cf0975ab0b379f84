"""Random garbage at every socket of a running cluster while a well-behaved client streams.

Threads throw random and half-valid bytes at the edge's client port, the broker's HTTP API, its
ZeroMQ PULL, SUB and command sockets, and the edge-facing XPUB and ROUTER (a hostile "edge").
Meanwhile a publisher publishes over the HTTP API and a stream client must receive every
message, in order, within a second of its publish; afterwards both processes are still running
and stop cleanly.  The random seed is printed so a failure can be replayed
(``GRIPCAST_FUZZ_SEED``).
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time

import msgpack
import pytest
import zmq
from gripcontrol import GripPubControl, create_grip_channel_header

from broker.ingest import tnetstring
from tests.integration.cluster import Cluster, Origin, StreamClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DURATION_S = 4.0
HTTP_SNIPPETS = [
    b"GET / HTTP/1.1\r\n",
    b"POST /publish HTTP/1.1\r\n",
    b"Host: x\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: Upgrade\r\n",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
    b"Expect: 100-continue\r\n",
    b"\r\n",
    b"ffffffff\r\n",
    b"0\r\n\r\n",
    b"GET http://evil/ HTTP/1.1\r\n",
    b"CONNECT evil:443 HTTP/1.1\r\n",
    b"X: " + b"a" * 9000 + b"\r\n",
    b"\x00\xff",
    b'{"items": [{"channel": "good", "formats": {}}]}',
    b"\x88\x82abcd",
]


def garbage(rng: random.Random, n: int = 400) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(0, n))
    return b"".join(rng.choice(HTTP_SNIPPETS) for _ in range(rng.randint(1, 8)))


def json_garbage(rng: random.Random):
    # Valid items may come out of this: they go to channel "fuzz", never to the good client's
    # channel, where a random but valid "close" would legitimately end its stream.
    choices = [None, True, -1, 2**70, 1.5, "", "fuzz", "\x00", [], {}, "send", "close"]
    keys = [
        "channel",
        "formats",
        "http-stream",
        "content",
        "id",
        "prev-id",
        "items",
        "action",
        "http-response",
        "ws-message",
        "code",
        "headers",
        "body-bin",
        "content-bin",
    ]

    def value(depth=0):
        r = rng.random()
        if depth > 3 or r < 0.4:
            return rng.choice(choices)
        if r < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 4))}

    return value()


def packb(value) -> bytes:
    try:
        return msgpack.packb(value)
    except (OverflowError, TypeError, ValueError):
        return b"\xc1"  # msgpack's never-used byte


def tcp_fuzzer(port: int, rng: random.Random, stop: threading.Event, stats: dict, key: str):
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                for _ in range(rng.randint(1, 3)):
                    s.sendall(garbage(rng))
                if rng.random() < 0.3:
                    s.shutdown(socket.SHUT_WR)
                s.settimeout(0.2)
                try:
                    s.recv(65536)
                except (TimeoutError, OSError):
                    pass
            stats[key] += 1
        except OSError:
            stats[key + "_err"] += 1


def zmq_fuzzer(ports: dict, rng: random.Random, stop: threading.Event, stats: dict):
    ctx = zmq.Context()
    socks = []

    def sock(kind, port, **opts):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        for k, v in opts.items():
            s.setsockopt(getattr(zmq, k), v)
        s.connect(f"tcp://127.0.0.1:{port}")
        socks.append(s)
        return s

    push = sock(zmq.PUSH, ports["push_in_port"])
    pub = sock(zmq.PUB, ports["sub_in_port"])
    cmd = sock(zmq.DEALER, ports["command_port"])
    ctl = sock(zmq.DEALER, ports["edge_ctl_port"])
    xsub = sock(zmq.XSUB, ports["edge_pub_port"])
    try:
        while not stop.is_set():
            j = json.dumps(json_garbage(rng)).encode()
            frames = {
                "push": [
                    rng.choice(
                        [
                            b"J" + j,
                            b"T" + rng.randbytes(30),
                            garbage(rng),
                            b"J" + b"[" * 5000,
                            rng.randbytes(200_000),
                        ]
                    )
                ],
                "push_multi": [garbage(rng), garbage(rng)],
                "pub": [rng.choice([b"fuzz", b"", b"\x00", rng.randbytes(8)]), b"J" + j],
                "cmd": [
                    b"",
                    rng.choice(
                        [
                            garbage(rng),
                            tnetstring.dumps(
                                {
                                    b"method": rng.choice(
                                        [b"publish", b"get-zmq-uris", b"recover", b"x"]
                                    ),
                                    b"args": {b"items": [b"x", 5]},
                                }
                            ),
                        ]
                    ),
                ],
                "ctl": [
                    rng.choice(
                        [
                            garbage(rng),
                            packb(json_garbage(rng)),
                            msgpack.packb(
                                {
                                    "op": "replay",
                                    "channel": "good",
                                    "after_seq": -5,
                                    "limit": 10**9,
                                    "rid": 1,
                                }
                            ),
                            msgpack.packb({"op": "position", "channel": "\x00"}),
                        ]
                    )
                ],
                "xsub": [
                    rng.choice(
                        [
                            b"\x01" + rng.randbytes(5) + b"\x00",
                            b"\x00good\x00",
                            b"\x01" + b"z" * 2000 + b"\x00",
                            garbage(rng, 20),
                        ]
                    )
                ],
            }
            name = rng.choice(list(frames))
            target = {
                "push": push,
                "push_multi": push,
                "pub": pub,
                "cmd": cmd,
                "ctl": ctl,
                "xsub": xsub,
            }[name]
            try:
                target.send_multipart(frames[name], zmq.NOBLOCK)
                stats["zmq"] += 1
            except zmq.Again:
                time.sleep(0.01)
            for s in (cmd, ctl, xsub):
                try:
                    while True:
                        s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    pass
            if rng.random() < 0.05:
                time.sleep(0.01)
    finally:
        for s in socks:
            s.close()
        ctx.term()


def test_garbage_everywhere_while_a_good_client_streams(tmp_path):
    seed = int(os.environ.get("GRIPCAST_FUZZ_SEED") or random.randrange(2**32))
    print(f"fuzz seed {seed} (GRIPCAST_FUZZ_SEED={seed} replays it)")

    def stream(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("good"),
            },
            b"[open]\n",
        )

    with Origin({"/stream": stream}) as origin:
        cluster = Cluster(tmp_path, [f"* 127.0.0.1:{origin.port}"], client_head_timeout_s=2.0)
        cluster.start()
        stop = threading.Event()
        stats = {k: 0 for k in ("edge", "edge_err", "api", "api_err", "zmq")}
        threads = [
            threading.Thread(
                target=tcp_fuzzer,
                args=(cluster.edge_ports[0], random.Random(seed), stop, stats, "edge"),
            ),
            threading.Thread(
                target=tcp_fuzzer,
                args=(cluster.edge_ports[0], random.Random(seed + 1), stop, stats, "edge"),
            ),
            threading.Thread(
                target=tcp_fuzzer,
                args=(cluster.ports["http_port"], random.Random(seed + 2), stop, stats, "api"),
            ),
            threading.Thread(
                target=zmq_fuzzer, args=(cluster.ports, random.Random(seed + 3), stop, stats)
            ),
        ]
        try:
            good = StreamClient(cluster.url("/stream"))
            good.read_until(b"[open]\n")
            pub = GripPubControl({"control_uri": cluster.publish_url})
            for t in threads:
                t.start()
            lags, n, t_end = [], 0, time.monotonic() + DURATION_S
            while time.monotonic() < t_end:
                n += 1
                t0 = time.monotonic()
                pub.publish_http_stream("good", f"msg {n}\n")
                good.read_until(f"msg {n}\n".encode(), timeout=5)
                lags.append(time.monotonic() - t0)
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join(10)
            good.read_until(f"msg {n}\n".encode())
            got = [line for line in good.data.decode().splitlines() if line.startswith("msg ")]
            assert got == [f"msg {i}" for i in range(1, n + 1)]  # every one, in order, once
            assert max(lags) < 1.0, (max(lags), seed)
            assert stats["edge"] > 20 and stats["api"] > 10 and stats["zmq"] > 100, stats
            for p in cluster.procs:
                assert p.proc.poll() is None, f"a process died (seed {seed})"
            good.close()
        finally:
            stop.set()
            codes = cluster.stop()
    assert codes == [0, 0], (codes, seed)
    print("fuzz stats", stats, "messages", n, f"max lag {max(lags):.3f}")
