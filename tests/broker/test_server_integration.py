"""The broker process on loopback: readiness, fan-out, markers, control, PUSH and commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import tnetstring as tnet3  # the tnetstring3 package, as pubcontrol uses it
import zmq

from broker import wire
from tests.helpers import NotifySocket, free_ports, stop_process

ROOT = Path(__file__).resolve().parents[2]
PORT_KEYS = (
    "push_in_port",
    "http_port",
    "sub_in_port",
    "command_port",
    "edge_pub_port",
    "edge_ctl_port",
)
TWIN_SELECTORS = ("GRIPCAST_NO_SPEEDUPS", "GRIPCAST_REQUIRE_SPEEDUPS")
CHILD = (
    "import json, sys\n"
    "from broker.config import load_config\n"
    "from broker.server import main\n"
    "sys.exit(main(load_config(overrides=json.loads(sys.argv[1]))))\n"
)


def recv(sock: zmq.Socket, timeout_ms: int = 5000) -> list[bytes]:
    if not sock.poll(timeout_ms, zmq.POLLIN):
        raise TimeoutError("no message in time")
    return sock.recv_multipart()


def raw_http(addr: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(request)
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


# per SUB socket: the channel topics it holds, and the frames of a batch message not read yet
_held: dict[int, set[bytes]] = {}
_unread: dict[int, list[bytes]] = {}


def subscribe_channel(sub: zmq.Socket, channel: str) -> None:
    """Subscribe as an edge does: the batch topic (wire version 4), then the channel's."""
    sub.setsockopt(zmq.SUBSCRIBE, wire.BATCH_TOPIC)
    sub.setsockopt(zmq.SUBSCRIBE, wire.topic(channel))
    _held.setdefault(id(sub), set()).add(channel.encode())


def recv_frame(sub: zmq.Socket) -> wire.Envelope | wire.Marker:
    """The next channel frame on ``sub``, batch messages read as an edge reads them."""
    unread = _unread.setdefault(id(sub), [])
    while not unread:
        (msg,) = recv(sub)
        if not wire.is_batch(msg):
            return wire.decode_frame(msg)
        unread.extend(wire.split_batch(msg, _held.get(id(sub), set())))
    return wire.decode_frame(unread.pop(0))


@pytest.fixture
def broker_proc():
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS))))
    notify = NotifySocket()
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONPATH=str(ROOT))
    # no config from the environment (GRIPCAST_* keys), but the twin choice is the run's
    env = {k: v for k, v in env.items() if not k.startswith("GRIPCAST_") or k in TWIN_SELECTORS}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(dict(ports, log_level="debug"))],
        cwd=ROOT,
        env=env,
    )
    try:
        notify.wait_ready(proc, timeout=20)
        yield proc, ports
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_broker_end_to_end(broker_proc):
    proc, ports = broker_proc
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []

    def sock(kind: int, port_key: str) -> zmq.Socket:
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{ports[port_key]}")
        socks.append(s)
        return s

    try:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SNDHWM, 0)
        socks.append(sub)
        subscribe_channel(sub, "test")
        sub.connect(f"tcp://127.0.0.1:{ports['edge_pub_port']}")

        # subscribing gets the channel's position marker
        marker = recv_frame(sub)
        assert isinstance(marker, wire.Marker)
        assert marker.channel == "test" and marker.last_seq == 0
        epoch = marker.epoch

        # HTTP publish -> envelope seq 1
        body = {
            "items": [
                {"channel": "test", "id": "a1", "formats": {"http-stream": {"content": "hello\n"}}}
            ]
        }
        r = httpx.post(f"http://127.0.0.1:{ports['http_port']}/publish/", json=body, timeout=5)
        assert (r.status_code, r.text) == (200, "Published\n")
        assert r.headers["connection"] == "close"
        env = recv_frame(sub)
        assert isinstance(env, wire.Envelope)
        assert (env.channel, env.seq, env.epoch, env.id) == ("test", 1, epoch, "a1")
        assert env.formats == {"http-stream": {"action": "send", "content": b"hello\n"}}

        # control: hello, position, replay
        dealer = sock(zmq.DEALER, "edge_ctl_port")
        dealer.send(wire.encode_request(wire.HelloRequest(rid=1)))
        hello = wire.decode_control(recv(dealer)[-1])
        assert hello["ok"] and hello["rid"] == 1 and hello["broker_id"]
        dealer.send(wire.encode_control({"op": "position", "rid": 2, "channel": "test"}))
        pos = wire.decode_control(recv(dealer)[-1])
        assert pos == {
            "rid": 2,
            "ok": True,
            "channel": "test",
            "epoch": epoch,
            "last_seq": 1,
            "last_id": "a1",
        }
        dealer.send(
            wire.encode_control(
                {
                    "op": "replay",
                    "rid": 3,
                    "channel": "test",
                    "epoch": epoch,
                    "after_seq": 0,
                    "after_id": None,
                    "limit": 10,
                }
            )
        )
        rep = wire.decode_control(recv(dealer)[-1])
        assert rep["ok"] and rep["complete"] and rep["last_seq"] == 1
        assert [m["seq"] for m in rep["items"]] == [1]

        # a bare tnetstring over PUSH (what pubcontrol's zmq client sends)
        push = sock(zmq.PUSH, "push_in_port")
        push.send(
            tnet3.dumps(
                {b"channel": b"test", b"formats": {b"http-stream": {b"content": b"bare\n"}}}
            )
        )
        env = recv_frame(sub)
        assert isinstance(env, wire.Envelope)
        assert (env.seq, env.formats["http-stream"]["content"]) == (2, b"bare\n")

        # a bad item never kills the broker; the next good one still flows
        push.send(b"J{not json")
        push.send(
            b"T"
            + tnet3.dumps({b"channel": b"test", b"formats": {b"http-stream": {b"content": b"t\n"}}})
        )
        env = recv_frame(sub)
        assert isinstance(env, wire.Envelope) and env.seq == 3

        # the command socket, as pubcontrol's discovery uses it
        req = sock(zmq.REQ, "command_port")
        req.send(tnet3.dumps({b"method": b"get-zmq-uris"}))
        resp = tnet3.loads(recv(req)[0])
        assert resp[b"success"] is True
        assert (
            resp[b"value"][b"publish-pull"] == f"tcp://127.0.0.1:{ports['push_in_port']}".encode()
        )

        # an XPUB publisher (pubcontrol's require_subscribers mode) sees the live channel and
        # its [channel, item] messages are sequenced like any other
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.RCVHWM, 0)
        socks.append(xpub)
        xpub.connect(f"tcp://127.0.0.1:{ports['sub_in_port']}")
        assert recv(xpub) == [b"\x01test"]
        xpub.send_multipart([b"test", tnet3.dumps({b"http-stream": {b"content": b"x\n"}})])
        env = recv_frame(sub)
        assert isinstance(env, wire.Envelope) and env.seq == 4

        # raw HTTP: Pushpin's server-level answers
        http = ("127.0.0.1", ports["http_port"])
        assert raw_http(http, b"POST /publish HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
            b"HTTP/1.1 411 Length Required\r\n"
        )
        big = b"GET / HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"
        assert b"400 Bad Request" in raw_http(http, big)
        resp = raw_http(http, b"GET /publish HTTP/1.0\r\n\r\n")
        assert resp.startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
        assert resp.endswith(b"\r\n\r\nMethod not allowed: GET.\n")
        assert b"Allow: POST\r\n" in resp and b"Connection: close\r\n" in resp
        resp = raw_http(http, b"POST /recover HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert resp.endswith(b"Updated\n")

        # heartbeats flow on their own topic
        hb = ctx.socket(zmq.SUB)
        hb.setsockopt(zmq.LINGER, 0)
        socks.append(hb)
        hb.setsockopt(zmq.SUBSCRIBE, wire.HEARTBEAT_TOPIC)
        hb.connect(f"tcp://127.0.0.1:{ports['edge_pub_port']}")
        (frame,) = recv(hb, 5000)
        beat = wire.decode_heartbeat(frame)
        assert beat.broker_id == hello["broker_id"] and beat.wire_version == wire.WIRE_VERSION
        assert hello["wire"] == wire.WIRE_VERSION
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()

    assert stop_process(proc, timeout=10) == 0
