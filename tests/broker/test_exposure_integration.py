"""The broker process against hostile publishers (security issue 11, items 8 and 9): recover
and hint floods are rate-limited on every input, the HTTP API has a connection cap, and a
network bind of the publish inputs without auth does not start."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tnetstring as tnet3
import zmq

from broker import wire
from broker.errors import EXIT_CONFIG
from tests.helpers import NotifySocket, free_ports, stop_process, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
PORT_KEYS = (
    "push_in_port",
    "http_port",
    "sub_in_port",
    "command_port",
    "edge_pub_port",
    "edge_ctl_port",
    "metrics_port",
)
CHILD = (
    "import json, sys\n"
    "from broker.config import load_config\n"
    "from broker.server import main\n"
    "sys.exit(main(load_config(overrides=json.loads(sys.argv[1]))))\n"
)


@contextlib.contextmanager
def broker(**overrides):
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS))))
    notify = NotifySocket()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIPCAST_")}
    env.update(NOTIFY_SOCKET=notify.path, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps({**ports, **overrides})], cwd=ROOT, env=env
    )
    try:
        notify.wait_ready(proc, timeout=20)
        yield ports
    finally:
        stop_process(proc)
        notify.close()


def zsock(ctx: zmq.Context, kind: int, port: int, *subscribe: bytes) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    for topic in subscribe:
        s.setsockopt(zmq.SUBSCRIBE, topic)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def frames_until_heartbeat_after(sub: zmq.Socket, t: float) -> list[bytes]:
    """Frames received before the first heartbeat sent after ``t`` (the broker sends in order,
    so every frame it sent before ``t`` is in the list)."""
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not sub.poll(1000):
            continue
        (frame,) = sub.recv_multipart()
        if wire.is_heartbeat(frame):
            if wire.decode_heartbeat(frame).ts > t:
                return got
            continue
        got.append(frame)
    raise TimeoutError("no heartbeat")


def metric(ports, line_start: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{ports['metrics_port']}/metrics").text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_recover_flood_is_rate_limited_on_every_input():
    """Each recover makes every edge re-request every held session from its origin: a flood
    of them (HTTP and command socket) reaches the edges at recover_per_s."""
    ctx = zmq.Context()
    with broker(recover_per_s=0.01) as ports:  # burst 1.01: one recover, then ~none
        sub = zsock(ctx, zmq.SUB, ports["edge_pub_port"], wire.RECOVER_TOPIC, wire.HEARTBEAT_TOPIC)
        frames_until_heartbeat_after(sub, 0)  # the subscription is in place
        url = f"http://127.0.0.1:{ports['http_port']}/recover"
        statuses = [httpx.post(url).status_code for _ in range(10)]
        assert statuses == [200] + [429] * 9
        r = httpx.post(url)
        assert r.status_code == 429 and "recover_per_s" in r.text
        cmd = zsock(ctx, zmq.REQ, ports["command_port"])
        cmd.send(tnet3.dumps({b"id": b"1", b"method": b"recover"}))
        assert cmd.poll(5000)
        reply = tnet3.loads(cmd.recv())
        assert reply[b"success"] is False and reply[b"condition"] == b"rate-limited"
        recovers = [f for f in frames_until_heartbeat_after(sub, time.time()) if wire.is_recover(f)]
        assert len(recovers) == 1
        assert metric(ports, 'gripcast_broker_rate_limited_total{kind="recover"}') == 11
        for s in (sub, cmd):
            s.close()
    ctx.term()


def test_hint_flood_is_rate_limited_per_channel():
    """Published hint actions (each makes every session held on the channel ask its origin)
    pass at hint_per_channel_per_s; sends are never limited; HTTP answers 429."""
    ctx = zmq.Context()
    with broker(hint_per_channel_per_s=0.01) as ports:
        sub = zsock(
            ctx,
            zmq.SUB,
            ports["edge_pub_port"],
            wire.topic("h"),
            wire.HEARTBEAT_TOPIC,
            wire.BATCH_TOPIC,  # what an edge holding h subscribes to
        )
        frames_until_heartbeat_after(sub, 0)  # subscribed: channel h is live
        push = zsock(ctx, zmq.PUSH, ports["push_in_port"])
        hint = {"channel": "h", "formats": {"http-stream": {"action": "hint"}}}
        for _ in range(20):
            push.send(b"J" + json.dumps(hint).encode())
        push.send(
            b"J"
            + json.dumps(
                {"channel": "h", "formats": {"http-stream": {"content": "after\n"}}}
            ).encode()
        )
        got = []
        while len(got) < 2:
            assert sub.poll(5000)
            (msg,) = sub.recv_multipart()
            if wire.is_heartbeat(msg):
                continue
            for frame in wire.split_batch(msg, {b"h"}) if wire.is_batch(msg) else [msg]:
                f = wire.decode_frame(frame)
                if isinstance(f, wire.Envelope):
                    got.append(f.formats["http-stream"])
        assert got[0]["action"] == "hint" and got[1]["content"] == b"after\n"  # 19 dropped
        r = httpx.post(f"http://127.0.0.1:{ports['http_port']}/publish/", json={"items": [hint]})
        assert r.status_code == 429 and "hint" in r.text and r.headers["retry-after"] == "1"
        # another channel has its own bucket
        r = httpx.post(
            f"http://127.0.0.1:{ports['http_port']}/publish/",
            json={"items": [dict(hint, channel="other")]},
        )
        assert r.status_code == 200
        assert metric(ports, 'gripcast_broker_rate_limited_total{kind="hint"}') == 20
        for s in (sub, push):
            s.close()
    ctx.term()


def test_http_api_connection_cap():
    """Connections that send nothing held every HTTP API slot until each timed out (30 s):
    beyond http_maxconn a connection gets 503 at once, and the API serves again once the
    holders leave."""
    with broker(http_maxconn=3) as ports:
        addr = ("127.0.0.1", ports["http_port"])
        idle = [socket.create_connection(addr, timeout=5) for _ in range(3)]
        try:
            wait_for(lambda: metric(ports, "gripcast_broker_http_connections ") == 3)
            with socket.create_connection(addr, timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 503 ") and data.endswith(b"Too many connections.\n")
            assert metric(ports, "gripcast_broker_http_connections_refused_total") == 1
        finally:
            for s in idle:
                s.close()
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{addr[1]}/").status_code == 200)


@pytest.mark.parametrize(
    "flags, named",
    [
        (['broker_bind = "0.0.0.0"'], "broker_bind (the default of publish_bind): '0.0.0.0'"),
        (['http_bind = "0.0.0.0"'], "http_bind: '0.0.0.0' is not loopback"),
    ],
)
def test_public_publish_bind_without_auth_does_not_start(tmp_path, flags, named):
    cfg = tmp_path / "gripcast.toml"
    cfg.write_text("\n".join(flags) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIPCAST_")}
    r = subprocess.run(
        [sys.executable, "-m", "gripcast", "broker", "--config", str(cfg)],
        cwd=ROOT,
        env=dict(env, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == EXIT_CONFIG
    assert named in r.stderr and "allow_unauthenticated_publish" in r.stderr


def test_roles_bind_where_configured():
    """edge_bind and publish_bind are separate: the publish inputs stay on loopback while the
    edge sockets take another address (127.0.0.2 stands for the network here)."""
    with broker(edge_bind="127.0.0.2", publish_bind="127.0.0.1") as ports:
        with socket.create_connection(("127.0.0.2", ports["edge_pub_port"]), timeout=5):
            pass
        for key in ("push_in_port", "command_port", "sub_in_port", "http_port"):
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.2", ports[key]), timeout=5).close()
            socket.create_connection(("127.0.0.1", ports[key]), timeout=5).close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ports["edge_pub_port"]), timeout=5).close()
