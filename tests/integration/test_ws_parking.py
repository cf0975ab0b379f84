"""Idle WebSockets (WebSocket-over-HTTP origin, plain socket) park (edge.parking): no trio task
while idle, and publishes, pings, messages to the origin, keep-alives and both close
handshakes work as before.

One broker + one edge (real processes) and one scripted origin for the module; clients are raw
WebSocket sockets (tests.integration.wsraw).  The edge's /metrics tells how many connections
are parked and how many trio tasks it runs.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest
from gripcontrol import GripPubControl, WebSocketMessageFormat, decode_websocket_events
from pubcontrol import Item

from tests.helpers import free_port_block, wait_for
from tests.integration.cluster import Cluster, Origin
from tests.integration.test_parking import _get, metrics, parked
from tests.integration.wsraw import client_frame, raw_ws, read_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WOH = "application/websocket-events"


def _event(type_: str, content: bytes | None = None) -> bytes:
    if content is None:
        return type_.encode() + b"\r\n"
    return b"%s %x\r\n%s\r\n" % (type_.encode(), len(content), content)


def _control(obj: dict) -> bytes:
    return _event("TEXT", b"c:" + json.dumps(obj).encode())


def woh_app(origin: Origin, channel: str, keep_alive: bool = False):
    """Subscribes the client to ``channel`` at OPEN (and asks for a 1-s keep-alive message);
    echoes ``echo:X`` as ``X``, answers PING with PONG and CLOSE with CLOSE."""

    def fn(req):
        cid = req.headers["Connection-Id"]
        body = next(r[3] for r in reversed(origin.requests) if r[2].get("Connection-Id") == cid)
        out = b""
        for ev in decode_websocket_events(body):
            if ev.type == "OPEN":
                out += _event("OPEN") + _control({"type": "subscribe", "channel": channel})
                if keep_alive:
                    out += _control({"type": "keep-alive", "content": "ka", "timeout": 1})
            elif ev.type == "TEXT" and (ev.content or b"").startswith(b"echo:"):
                out += _event("TEXT", b"m:" + ev.content[5:])
            elif ev.type == "PING":
                out += _event("PONG", ev.content)
            elif ev.type == "CLOSE":
                out += _event("CLOSE", ev.content)
        return 200, {"Content-Type": WOH, "Sec-WebSocket-Extensions": "grip"}, out

    return fn


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mport = free_port_block(2)
    routes: dict = {}
    with Origin(routes) as origin:
        routes["/idle"] = woh_app(origin, "wsp-idle")
        routes["/talk"] = woh_app(origin, "wsp-talk")
        routes["/ka"] = woh_app(origin, "wsp-ka", keep_alive=True)
        with Cluster(
            tmp_path_factory.mktemp("wsparking"),
            [f"* 127.0.0.1:{origin.port},over_http"],
            metrics_port=mport,
            edge_metrics_port=mport + 1,
        ) as cluster:
            wait_for(
                lambda: _get(f"http://127.0.0.1:{mport + 1}/ready") == 200,
                what="edge metrics ready",
            )
            yield cluster, mport + 1, GripPubControl({"control_uri": cluster.publish_url}), origin


def _ws_count(mport: int) -> float:
    return metrics(mport).get("gripcast_edge_connections{transport=ws}", 0.0)


def _disconnects(origin: Origin) -> int:
    return sum(1 for r in origin.requests if b"DISCONNECT" in r[3])


def _eof(s: socket.socket) -> bool:
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except OSError:
        return True


def test_idle_websockets_park_without_tasks_get_publishes_and_leave(env):
    cluster, mport, pub, origin = env
    wait_for(lambda: parked(mport) == 0, what="nothing parked at start")
    before = metrics(mport)
    n = 30
    clients = [raw_ws(cluster.edge_ports[0], "/idle") for _ in range(n)]
    wait_for(lambda: parked(mport) == n, what=f"{n} websockets parked")
    m = metrics(mport)
    # no task per idle WebSocket (two each, and a nursery, before)
    assert m["gripcast_edge_trio_tasks"] - before["gripcast_edge_trio_tasks"] < 5
    assert m["gripcast_edge_connections{transport=ws}"] == n
    assert m["gripcast_edge_subscriptions"] >= n
    pub.publish("wsp-idle", Item(WebSocketMessageFormat("hello")))
    for c in clients:
        assert read_frame(c) == (1, b"hello")
    assert parked(mport) == n  # delivery wrote to the fds: nobody woke
    # clients that vanish are seen at once: the origin gets DISCONNECT, the counts go down
    gone = _disconnects(origin)
    for c in clients:
        c.close()
    wait_for(lambda: parked(mport) == 0, timeout=5, what="all unparked")
    wait_for(lambda: _ws_count(mport) == 0, timeout=5, what="websocket connections closed")
    wait_for(lambda: _disconnects(origin) == gone + n, timeout=5, what="DISCONNECT for each")


def test_ping_message_and_client_close_wake_a_parked_websocket(env):
    cluster, mport, pub, origin = env
    c = raw_ws(cluster.edge_ports[0], "/talk")
    wait_for(lambda: parked(mport) == 1, what="parked")
    parks = metrics(mport)["gripcast_edge_parks_total"]
    c.sendall(client_frame(9, b"p1"))  # the origin answers the ping: the pong comes back
    assert read_frame(c) == (10, b"p1")
    c.sendall(client_frame(1, b"echo:abc"))
    assert read_frame(c) == (1, b"abc")
    wait_for(
        lambda: metrics(mport)["gripcast_edge_parks_total"] > parks and parked(mport) == 1,
        what="parked again",
    )
    pub.publish("wsp-talk", Item(WebSocketMessageFormat("still here")))
    assert read_frame(c) == (1, b"still here")
    # the client's close goes to the origin, whose CLOSE answers it; then the edge hangs up
    c.sendall(client_frame(8, struct.pack("!H", 4001) + b"bye"))
    assert read_frame(c) == (8, struct.pack("!H", 4001) + b"bye")
    assert _eof(c)
    c.close()
    wait_for(lambda: parked(mport) == 0 and _ws_count(mport) == 0, timeout=5, what="ended")
    assert any(_event("CLOSE", struct.pack("!H", 4001) + b"bye") in r[3] for r in origin.requests)


def test_keep_alives_and_a_published_close_reach_a_parked_websocket(env):
    cluster, mport, pub, origin = env
    c = raw_ws(cluster.edge_ports[0], "/ka")
    wait_for(lambda: parked(mport) == 1, what="parked")
    # the keep-alive message (every 1 s) comes from the edge's WsTimers, twice, still parked
    assert read_frame(c) == (1, b"ka")
    assert read_frame(c) == (1, b"ka")
    assert parked(mport) == 1
    pub.publish("wsp-ka", Item(WebSocketMessageFormat(action="close", code=4002)))
    op, payload = read_frame(c)
    while op == 1:  # (a keep-alive sent meanwhile)
        op, payload = read_frame(c)
    assert (op, payload[:2]) == (8, struct.pack("!H", 4002))
    c.sendall(client_frame(8, struct.pack("!H", 4002)))  # the reply ends the connection
    assert _eof(c)
    c.close()
    wait_for(lambda: parked(mport) == 0 and _ws_count(mport) == 0, timeout=5, what="ended")
    # the origin heard the close (a bare CLOSE, as Pushpin sends for a published close)
    cid_reqs = [r for r in origin.requests if r[1] == "/ka"]
    assert any(b"CLOSE" in r[3] for r in cid_reqs)


def test_many_websockets_park_and_wake_in_turn_and_nothing_is_lost(env):
    """Parks and wakes racing with publishes: 40 clients each send 5 messages (each woken,
    answered by the origin, parked again) while messages are published to all of them; every
    reply and every publish arrives, in order per kind, and all park again at the end."""
    cluster, mport, pub, origin = env
    wait_for(lambda: parked(mport) == 0, what="nothing parked at start")
    n, rounds = 40, 5
    clients = [raw_ws(cluster.edge_ports[0], "/idle") for _ in range(n)]
    wait_for(lambda: parked(mport) == n, what=f"{n} websockets parked")
    got: list[list[bytes]] = [[] for _ in range(n)]
    for r in range(rounds):
        for i, c in enumerate(clients):
            c.sendall(client_frame(1, b"echo:r%d-c%d" % (r, i)))
        pub.publish("wsp-idle", Item(WebSocketMessageFormat(f"pub{r}")))
        for i, c in enumerate(clients):
            while sum(1 for m in got[i] if m.startswith(b"r%d-" % r)) == 0 or (
                b"pub%d" % r not in got[i]
            ):
                op, payload = read_frame(c)
                assert op == 1
                got[i].append(payload)
    for i in range(n):
        assert [m for m in got[i] if m.startswith(b"r")] == [
            b"r%d-c%d" % (r, i) for r in range(rounds)
        ]
        assert [m for m in got[i] if m.startswith(b"pub")] == [b"pub%d" % r for r in range(rounds)]
    wait_for(lambda: parked(mport) == n, timeout=5, what="all parked again")
    for c in clients:
        c.close()
    wait_for(lambda: parked(mport) == 0 and _ws_count(mport) == 0, timeout=5, what="all ended")
