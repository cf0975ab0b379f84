"""The edge process end to end: a fake broker (XPUB + ROUTER) and a tiny origin in the test."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import zmq

from broker import wire
from broker.config import load_config
from tests.helpers import NotifySocket, free_ports, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCH = "epoch-1"


class FakeBroker:
    """XPUB + ROUTER speaking broker/wire.py, driven from its own thread."""

    def __init__(self, pub_port: int, ctl_port: int) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.pub.setsockopt(zmq.RCVHWM, 0)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://127.0.0.1:{pub_port}")
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.bind(f"tcp://127.0.0.1:{ctl_port}")
        self.history: dict[str, list[wire.Envelope]] = {}
        self.requests: list[dict] = []
        self.subscribed: dict[str, threading.Event] = {}
        self.commands: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def subscribed_event(self, channel: str) -> threading.Event:
        return self.subscribed.setdefault(channel, threading.Event())

    def publish(
        self,
        channel: str,
        stream: dict | None = None,
        live: bool = True,
        formats: dict | None = None,
    ) -> None:
        done = threading.Event()
        self.commands.put((channel, formats or {"http-stream": stream}, live, done))
        assert done.wait(5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pub.close(0)
        self.ctl.close(0)
        self.ctx.term()

    def _last(self, channel: str) -> int:
        return len(self.history.get(channel, []))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pub, zmq.POLLIN)
        poller.register(self.ctl, zmq.POLLIN)
        while not self.stop.is_set():
            events = dict(poller.poll(20))
            if self.pub in events:
                frame = self.pub.recv()
                notice = wire.subscription_notice(frame)
                if notice and notice[0]:
                    ch = notice[1]
                    self.pub.send(wire.encode_marker(ch, EPOCH, self._last(ch)))
                    self.subscribed_event(ch).set()
            if self.ctl in events:
                ident, frame = self.ctl.recv_multipart()
                self.ctl.send_multipart(
                    [ident, wire.encode_control(self._answer(wire.decode_control(frame)))]
                )
            while True:
                try:
                    channel, formats, live, done = self.commands.get_nowait()
                except queue.Empty:
                    break
                hist = self.history.setdefault(channel, [])
                env = wire.Envelope(
                    channel=channel, seq=len(hist) + 1, epoch=EPOCH, formats=formats
                )
                hist.append(env)
                if live:
                    self.pub.send(wire.encode_envelope(env))
                done.set()

    def _answer(self, req: dict) -> dict:
        self.requests.append(req)
        rid, op = req.get("rid"), req.get("op")
        if op == "hello":
            return wire.reply_map(wire.HelloReply(rid, "fake", 0.0))
        ch = req.get("channel", "")
        if op == "position":
            return {
                "rid": rid,
                "ok": True,
                "channel": ch,
                "epoch": EPOCH,
                "last_seq": self._last(ch),
                "last_id": None,
            }
        if op == "replay":
            items = [e.to_map() for e in self.history.get(ch, []) if e.seq > req["after_seq"]]
            return {
                "rid": rid,
                "ok": True,
                "channel": ch,
                "epoch": EPOCH,
                "last_seq": self._last(ch),
                "complete": True,
                "items": items[: req["limit"]],
            }
        return {"rid": rid, "ok": False, "error": "unknown op"}


class Origin(BaseHTTPRequestHandler):
    seen: list = []
    next_asked = threading.Event()  # /hinted/next was requested
    next_release = threading.Event()  # ... and may answer now

    def do_GET(self):  # noqa: N802 (http.server naming)
        Origin.seen.append((self.path, dict(self.headers)))
        if self.path == "/hinted":
            body = b"[open]\n"
            self.send_response(200)
            self.send_header("Grip-Hold", "stream")
            self.send_header("Grip-Channel", "hinted")
            self.send_header("Grip-Link", "</hinted/next>; rel=next")
        elif self.path == "/hinted/next":  # the same channel, and no next link any more
            Origin.next_asked.set()
            Origin.next_release.wait(10)
            body = b"[next]\n"
            self.send_response(200)
            self.send_header("Grip-Hold", "stream")
            self.send_header("Grip-Channel", "hinted")
        elif self.path == "/stream":
            body = b"stream open\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Grip-Hold", "stream")
            self.send_header("Grip-Channel", "test")
        elif self.path == "/poll":
            body = b"timeout\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Grip-Hold", "response")
            self.send_header("Grip-Channel", "poll")
        elif self.path == "/ka":
            body = b""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Grip-Hold", "stream")
            self.send_header("Grip-Channel", "ka")
            self.send_header("Grip-Keep-Alive", ":ka\\n\\n; format=cstring; timeout=1")
        elif self.path == "/bogus":
            body = b""
            self.send_response(200)
            self.send_header("Grip-Hold", "bogus")
        else:
            body = b"hello plain\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def cluster():
    edge_port, pub_port, ctl_port = free_ports(3)
    broker = FakeBroker(pub_port, ctl_port)
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    oport = origin.server_address[1]
    cfg = load_config(
        env={},
        overrides={
            "client_addr": "127.0.0.1",
            "client_port": edge_port,
            "broker_host": "127.0.0.1",
            "edge_pub_port": pub_port,
            "edge_ctl_port": ctl_port,
            "origin_timeout_s": 5.0,
            "routes": [f"127.0.0.1,debug 127.0.0.1:{oport}", f"localhost 127.0.0.1:{oport}"],
        },
    )
    notify = NotifySocket()
    code = (
        "import json, sys; from broker.config import config_from_dict; "
        "from edge.server import main; sys.exit(main(config_from_dict(json.loads(sys.argv[1]))))"
    )
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg.to_dict())], env=env, cwd=ROOT
    )
    try:
        notify.wait_ready(proc, timeout=15)
        yield edge_port, broker
    finally:
        rc = stop_process(proc)
        notify.close()
        origin.shutdown()
        origin.server_close()
        broker.close()
    assert rc == 0


def read_until(sock: socket.socket, buf: bytearray, needle: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"timed out before {needle!r}; got {bytes(buf)!r}") from None
        if not data:
            raise AssertionError(f"connection closed before {needle!r}; got {bytes(buf)!r}")
        buf += data


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """Decode chunked body bytes: (payload, saw the last chunk)."""
    out, i = b"", 0
    while i < len(data):
        end = data.index(b"\r\n", i)
        n = int(data[i:end], 16)
        if n == 0:
            return out, True
        out += data[end + 2 : end + 2 + n]
        i = end + 2 + n + 2
    return out, False


def test_passthrough_and_route_not_found(cluster):
    port, _ = cluster
    r = httpx.get(f"http://127.0.0.1:{port}/plain")
    assert r.status_code == 200
    assert r.text == "hello plain\n"
    path, headers = Origin.seen[-1]
    assert path == "/plain"
    assert "Grip-Sig" in headers and headers["Grip-Feature"]
    r = httpx.get(f"http://127.0.0.1:{port}/plain", headers={"Host": "nowhere.example"})
    assert r.status_code == 502
    assert r.text == "Route not found\n"
    assert r.headers["content-type"] == "text/plain"


def test_stream_hold_repairs_gap_and_closes(cluster):
    port, broker = cluster
    subscribed = broker.subscribed_event("test")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        buf = bytearray()
        read_until(s, buf, b"\r\n\r\n")
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Transfer-Encoding: chunked" in head
        assert b"Grip-" not in head and b"Content-Length" not in head
        body = bytearray(rest)
        read_until(s, body, b"stream open\n")
        assert subscribed.wait(10)
        broker.publish("test", {"action": "send", "content": b"one\n"})
        broker.publish("test", {"action": "send", "content": b"two\n"}, live=False)
        broker.publish("test", {"action": "send", "content": b"three\n"})
        read_until(s, body, b"three\n")
        payload, _ = dechunk(bytes(body))
        assert payload == b"stream open\none\ntwo\nthree\n"
        assert any(r.get("op") == "replay" and r.get("after_seq") == 1 for r in broker.requests)
        broker.publish("test", {"action": "close", "content": b""})
        read_until(s, body, b"0\r\n\r\n")
        payload, ended = dechunk(bytes(body))
        assert ended and payload.endswith(b"three\n")


def test_hint_during_a_next_link_fetch_that_ends_the_links(cluster):
    """A hint that comes while the next link is fetched, whose answer has no next link: a
    no-op (reference 2.6: "no-op without a next link"), the stream goes on.  What is published
    during the fetch is held and goes out after the link's body, as Pushpin's queue."""
    port, broker = cluster
    subscribed = broker.subscribed_event("hinted")
    Origin.next_asked.clear()
    Origin.next_release.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /hinted HTTP/1.1\r\nHost: localhost\r\n\r\n")
        body = bytearray()
        read_until(s, body, b"[open]\n")
        assert subscribed.wait(10)
        broker.publish("hinted", {"action": "hint"})
        assert Origin.next_asked.wait(10)
        # published while /hinted/next is in flight: held, "early" goes out after the link's
        # body (or live after it, if it comes later: the same bytes); the second hint is a
        # no-op (no next link any more)
        broker.publish("hinted", {"action": "send", "content": b"early\n"})
        broker.publish("hinted", {"action": "hint"})
        Origin.next_release.set()
        read_until(s, body, b"early\n")
        broker.publish("hinted", {"action": "send", "content": b"after\n"})
        read_until(s, body, b"after\n")
        payload, ended = dechunk(bytes(body.partition(b"\r\n\r\n")[2]))
        assert payload == b"[open]\n[next]\nearly\nafter\n" and not ended
    assert sum(1 for path, _ in Origin.seen if path == "/hinted/next") == 1


def test_response_hold_gets_published_response(cluster):
    port, broker = cluster
    subscribed = broker.subscribed_event("poll")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /poll HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert subscribed.wait(10)
        broker.publish(
            "poll",
            formats={
                "http-response": {
                    "action": "send",
                    "code": 200,
                    "reason": "OK",
                    "headers": [["X-Pub", "yes"]],
                    "body": b"published\n",
                    "body-patch": None,
                }
            },
        )
        buf = bytearray()
        read_until(s, buf, b"published\n")
        assert buf.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"X-Pub: yes\r\n" in buf and b"Content-Type: text/plain\r\n" in buf
        assert b"Content-Length: 10\r\n" in buf
        # the connection is kept alive: a second request on it works
        s.sendall(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
        read_until(s, buf, b"hello plain\n")


def test_keep_alive_and_bad_instruct(cluster):
    port, _ = cluster
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /ka HTTP/1.1\r\nHost: localhost\r\n\r\n")
        buf = bytearray()
        read_until(s, buf, b"\r\n\r\n")
        opened = time.monotonic()
        read_until(s, buf, b":ka\n\n")
        assert b"Content-Type: text/event-stream" in buf
        # Grip-Keep-Alive timeout=1: about one a second, as Pushpin (at least two in 3 s)
        s.settimeout(0.2)
        while time.monotonic() - opened < 3.0:
            try:
                buf += s.recv(4096)
            except TimeoutError:
                pass
        assert buf.count(b":ka\n\n") >= 2, buf
    r = httpx.get(f"http://127.0.0.1:{port}/bogus")  # route 127.0.0.1 has debug
    assert r.status_code == 502
    assert r.text == "Grip-Hold must be set to either 'response' or 'stream'\n"
    r = httpx.get(f"http://127.0.0.1:{port}/bogus", headers={"Host": "localhost"})
    assert r.status_code == 502 and r.text == "Error while proxying to origin.\n"
