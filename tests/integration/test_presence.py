"""Presence and channel namespaces against real processes: one broker and two edges (a third
edge started and killed -9 in one test), an origin that holds streams with ``Grip-Set-Meta:
user=...``, the publish API with ``publish_jwt_key``, ZeroMQ publishers, and a real
redis-server for the Redis store's per-prefix bounds (docs/channel-api.md)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import zmq
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from broker import wire
from broker.ingest import tnetstring
from broker.ops.presence import PRESENCE_BOUND_S
from edge.ops.presence import REPORT_INTERVAL_S
from gripcast.cli import main as cli_main
from gripcast.publish import auth_header
from tests.helpers import free_ports, skip_missing, wait_for
from tests.integration.cluster import Cluster, Origin, Proc, StreamClient, gripcast
from tests.integration.wsorigin import WohOriginApp
from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

KEY = "presence-test-secret-of-32-bytes-or-more"
NAMESPACES = """
[[namespace]]
prefix = "chat:"
presence = true
history_max_items = 50

[[namespace]]
prefix = "tick:"
history_max_items = 3
history_max_age_s = 1.0

[[namespace]]
prefix = "http:"
publish_zmq = false
"""


def _auth() -> dict[str, str]:
    return {"Authorization": auth_header("tests", KEY.encode(), time.time()) or ""}


def _hold(req):
    q = parse_qs(urlsplit(req.path).query)
    headers = {
        "Content-Type": "text/plain",
        "Grip-Hold": "stream",
        "Grip-Channel": q["ch"][0],
    }
    if "user" in q:
        headers["Grip-Set-Meta"] = f"user={q['user'][0]}"
    return 200, headers, b"open\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("presence")
    mport = free_ports(1)[0]
    with (
        Origin({"/hold": _hold}) as origin,
        WohOriginApp() as woh,
        _ws_origin() as wsport,
    ):
        cl = Cluster(
            tmp,
            [
                f"*,path_beg=/direct 127.0.0.1:{wsport}",
                f"*,path_beg=/ws 127.0.0.1:{woh.port},over_http",
                f"* 127.0.0.1:{origin.port}",
            ],
            edges=3,  # edge 2 is killed by one test
            separate_ports=True,
            history_max_items=5,
            publish_jwt_key=KEY,
            metrics_port=mport,
        )
        cl.ports["metrics_port"] = mport
        with open(cl.config, "a") as fh:
            fh.write(NAMESPACES)
        try:
            _start(cl)
            yield cl
        finally:
            cl.stop()


@contextlib.contextmanager
def _ws_origin():
    """A WebSocket origin (WS-to-WS, GRIP enabled) that names its user with the ``set-meta``
    control message, then subscribes to the channel of the path's query."""

    def handler(conn):
        q = parse_qs(urlsplit(conn.request.path).query)
        user, channel = q["user"][0], q["ch"][0]
        conn.send("c:" + json.dumps({"type": "set-meta", "name": "user", "value": user}))
        conn.send("c:" + json.dumps({"type": "subscribe", "channel": channel}))
        for _ in conn:
            pass

    def add_grip(conn, request, response):
        response.headers["Sec-WebSocket-Extensions"] = "grip"

    server = ws_serve(handler, "127.0.0.1", 0, process_response=add_grip)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        t.join(5)


def _start(cl: Cluster) -> None:
    """``Cluster.start`` with the edges started together (each waited on), not one by one."""
    cl.broker = Proc(gripcast("broker", "--config", cl.config)).wait_ready()
    cl.procs.append(cl.broker)
    edges = [
        Proc(
            gripcast(
                "edge",
                "--index",
                str(i),
                "--config",
                cl.config,
                "--port",
                f"127.0.0.1:{cl.edge_ports[i]}",
            )
        )
        for i in range(cl.edges)
    ]
    cl.procs += edges
    cl.edge_procs = [p.wait_ready() for p in edges]


def _presence(cl: Cluster, channel: str) -> dict[str, int]:
    r = httpx.get(f"{cl.publish_url}/channels/{channel}/presence", headers=_auth(), timeout=5)
    assert r.status_code == 200, r.text
    return {u["user"]: u["connections"] for u in r.json()["users"]}


def _client(cl: Cluster, channel: str, user: str | None = None, edge: int = 0) -> StreamClient:
    path = f"/hold?ch={channel}" + (f"&user={user}" if user else "")
    c = StreamClient(cl.url(path, edge)).wait_open()
    c.read_until(b"open\n")
    return c


def _events(watcher: StreamClient) -> list[dict]:
    body = watcher.data.split(b"open\n", 1)[1]
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _wait_event(watcher: StreamClient, kind: str, user: str, timeout: float = 8.0) -> None:
    watcher.read_until(f'"type":"{kind}","channel":'.encode(), timeout)
    deadline = time.monotonic() + timeout
    while not any(e["type"] == kind and e["user"] == user for e in _events(watcher)):
        watcher.read_for(min(0.2, max(deadline - time.monotonic(), 0.01)))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {kind} of {user}: {_events(watcher)}")


def _replay(cl: Cluster, channel: str) -> wire.ReplayReply:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    try:
        s.connect(f"tcp://127.0.0.1:{cl.ports['edge_ctl_port']}")
        s.send(wire.encode_request(wire.ReplayRequest(channel, limit=100, rid=1)))
        assert s.poll(5000), "no replay reply"
        rep = wire.decode_reply(s.recv(), wire.ReplayReply)
    finally:
        s.close()
    assert isinstance(rep, wire.ReplayReply), rep
    return rep


def _publish(cl: Cluster, channel: str, n: int) -> None:
    items = [
        {"channel": channel, "formats": {"http-stream": {"content": f"m{i}\n"}}} for i in range(n)
    ]
    r = httpx.post(f"{cl.publish_url}/publish/", json={"items": items}, headers=_auth())
    assert r.status_code == 200, r.text


def test_joins_and_leaves_across_edges(env):
    cl = env
    watcher = _client(cl, "chat:room/presence", edge=0)  # no user: not counted
    clients = []
    stack = contextlib.ExitStack()
    try:
        # four users at once, on both edges, by every way a user is named
        ann0 = _client(cl, "chat:room", "ann", edge=0)  # Grip-Set-Meta: user=ann (HTTP)
        clients.append(ann0)
        bob1 = _client(cl, "chat:room", "bob", edge=1)
        clients.append(bob1)
        # a WebSocket-over-HTTP client: its origin answers OPEN with Set-Meta-User: alice
        alice = stack.enter_context(
            ws_connect(f"ws://127.0.0.1:{cl.edge_ports[1]}/ws?channel=chat:room")
        )
        # a WebSocket client whose (WebSocket) origin sends the set-meta control message
        wes = stack.enter_context(
            ws_connect(f"ws://127.0.0.1:{cl.edge_ports[0]}/direct?ch=chat:room&user=wes")
        )
        for user in ("ann", "bob", "alice", "wes"):
            _wait_event(watcher, "join", user)
        ann1 = _client(cl, "chat:room", "ann", edge=1)  # ann again, on the other edge
        clients.append(ann1)
        wait_for(
            lambda: _presence(cl, "chat:room") == {"alice": 1, "ann": 2, "bob": 1, "wes": 1},
            5,
            "ann twice",
        )
        ann0.close()  # ann still has her edge-1 connection: no leave
        wait_for(
            lambda: _presence(cl, "chat:room") == {"alice": 1, "ann": 1, "bob": 1, "wes": 1},
            5,
            "ann once",
        )
        for c in (bob1, ann1, alice, wes):
            c.close()
        for user in ("bob", "ann", "alice", "wes"):
            _wait_event(watcher, "leave", user)
        assert _presence(cl, "chat:room") == {}
        kinds = [(e["type"], e["user"]) for e in _events(watcher)]
        assert sorted(kinds[:4]) == [
            ("join", "alice"),
            ("join", "ann"),
            ("join", "bob"),
            ("join", "wes"),
        ]  # once each
        assert sorted(kinds[4:]) == [
            ("leave", "alice"),
            ("leave", "ann"),
            ("leave", "bob"),
            ("leave", "wes"),
        ]
        assert all(e["channel"] == "chat:room" for e in _events(watcher))
    finally:
        stack.close()
        for c in clients + [watcher]:
            c.close()


def test_killed_edge_users_leave_within_the_bound(env):
    cl = env
    edge, port = cl.edge_procs[2], cl.edge_ports[2]
    watcher = _client(cl, "chat:kill/presence", edge=0)
    carol = _client(cl, "chat:kill", "carol", edge=0)
    try:
        dave = StreamClient(f"http://127.0.0.1:{port}/hold?ch=chat:kill&user=dave").wait_open()
        dave.read_until(b"open\n")
        wait_for(lambda: _presence(cl, "chat:kill") == {"carol": 1, "dave": 1}, 5, "dave present")
        killed = time.monotonic()
        edge.proc.kill()  # kill -9: no goodbye, the broker notices the silence
        edge.proc.wait()
        wait_for(
            lambda: _presence(cl, "chat:kill") == {"carol": 1},
            PRESENCE_BOUND_S + REPORT_INTERVAL_S + 3,
            "dave did not leave",
        )
        took = time.monotonic() - killed
        # the bound counts from the edge's last report, which came before the kill; 1 s of
        # slack for a loaded machine (polling, scheduling)
        assert took <= PRESENCE_BOUND_S + 1.0, took
        _wait_event(watcher, "leave", "dave")
        assert not any(e["user"] == "carol" and e["type"] == "leave" for e in _events(watcher))
        dave.close()
    finally:
        carol.close()
        watcher.close()


def test_presence_api_auth_and_cli(env, capsys):
    cl = env
    url = f"{cl.publish_url}/channels/chat:room/presence"
    assert httpx.get(url).status_code == 401
    bad = {"Authorization": auth_header("tests", b"wrong key", time.time()) or ""}
    assert httpx.get(url, headers=bad).status_code == 401
    assert httpx.get(url, headers=_auth()).status_code == 200
    off = httpx.get(f"{cl.publish_url}/channels/tick:x/presence", headers=_auth())
    assert off.status_code == 404 and "Presence is off" in off.text
    erin = _client(cl, "chat:cli", "erin", edge=1)
    try:
        wait_for(lambda: _presence(cl, "chat:cli") == {"erin": 1}, 5, "erin present")
        # the CLI's own code (gripcast.cli.main), in process: a process start costs ~1 s here
        base = ["presence", "chat:cli", "--url", cl.publish_url]
        capsys.readouterr()
        assert cli_main([*base, "--key", KEY, "--iss", "tests", "--json"]) == 0
        out = capsys.readouterr().out
        assert json.loads(out)["users"] == [{"user": "erin", "connections": 1}]
        assert cli_main([*base, "--key", KEY, "--iss", "tests"]) == 0
        assert "erin" in capsys.readouterr().out
        assert cli_main(base) == 1
        assert "401" in capsys.readouterr().err
    finally:
        erin.close()


def _command(cl: Cluster, method: str, args: dict) -> dict:
    req = zmq.Context.instance().socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(cl.command_uri)
        req.send(tnetstring.dumps({b"id": b"q", b"method": method.encode(), b"args": args}))
        assert req.poll(5000), "no reply on the command socket"
        return tnetstring.loads(req.recv())
    finally:
        req.close()


def test_presence_on_the_command_socket(env):
    """The ``presence`` command answers the HTTP call's map (docs/channel-api.md)."""
    cl = env
    fay = _client(cl, "chat:cmd", "fay", edge=0)
    gus = _client(cl, "chat:cmd", "gus", edge=1)
    try:
        wait_for(lambda: _presence(cl, "chat:cmd") == {"fay": 1, "gus": 1}, 5, "fay and gus")
        reply = _command(cl, "presence", {b"channel": b"chat:cmd", b"limit": 1})
        assert reply[b"success"] is True and reply[b"id"] == b"q", reply
        http = httpx.get(
            f"{cl.publish_url}/channels/chat:cmd/presence?limit=1", headers=_auth()
        ).json()
        value = reply[b"value"]
        assert value[b"count"] == http["count"] == 2 and value[b"truncated"] is True
        assert value[b"users"] == [{b"user": b"fay", b"connections": 1}] and http["users"] == [
            {"user": "fay", "connections": 1}
        ]
        off = _command(cl, "presence", {b"channel": b"tick:x"})
        assert off[b"success"] is False and off[b"condition"] == b"item-not-found", off
        bad = _command(cl, "presence", {b"channel": b"chat:cmd", b"limit": b"x"})
        assert bad[b"condition"] == b"bad-request" and b"limit" in bad[b"value"], bad
    finally:
        fay.close()
        gus.close()


def test_history_bounds_per_prefix_memory(env):
    cl = env
    for ch in ("tick:a", "chat:hist", "plain"):
        _publish(cl, ch, 8)
    assert len(_replay(cl, "tick:a").items) == 3  # its namespace's bound
    assert len(_replay(cl, "chat:hist").items) == 8  # its namespace's (50)
    assert len(_replay(cl, "plain").items) == 5  # the global history_max_items


def test_publish_zmq_false_refused(env):
    cl = env
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    req = ctx.socket(zmq.REQ)
    push.linger = req.linger = 0
    try:
        push.connect(f"tcp://127.0.0.1:{cl.ports['push_in_port']}")
        for ch in ("http:closed", "open:after"):  # in order: the second proves the first came
            item = {"channel": ch, "formats": {"http-stream": {"content": "x\n"}}}
            push.send(b"J" + json.dumps(item).encode())
        wait_for(lambda: _replay(cl, "open:after").last_seq == 1, 5, "open:after not stored")
        assert _replay(cl, "http:closed").last_seq == 0
        req.connect(cl.command_uri)
        item = {b"channel": b"http:closed", b"formats": {b"http-stream": {b"content": b"y"}}}
        req.send(
            tnetstring.dumps({b"id": b"7", b"method": b"publish", b"args": {b"items": [item]}})
        )
        assert req.poll(5000)
        reply = tnetstring.loads(req.recv())
        assert reply[b"success"] is False and reply[b"condition"] == b"forbidden", reply
        assert reply[b"id"] == b"7"
        assert _replay(cl, "http:closed").last_seq == 0
        _publish(cl, "http:closed", 1)  # the HTTP API may publish there
        assert _replay(cl, "http:closed").last_seq == 1
        metrics = httpx.get(f"http://127.0.0.1:{cl.ports['metrics_port']}/metrics").text
        assert "gripcast_broker_publishes_refused_zmq_total 2.0" in metrics
        assert 'gripcast_broker_presence_events_total{type="join"}' in metrics
    finally:
        push.close()
        req.close()


def _redis(port: int, *args: str) -> bytes:
    cmd = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(cmd)
        return s.recv(1024)


def test_history_bounds_per_prefix_redis(tmp_path):
    if not redis_available():
        skip_missing("redis-server")
    with RedisServer() as redis:
        cl = Cluster(tmp_path, [], edges=0, store=f"redis://127.0.0.1:{redis.port}/0")
        with open(cl.config, "a") as fh:
            fh.write(NAMESPACES)
        with cl:
            for ch in ("tick:r", "plain"):
                items = [
                    {"channel": ch, "formats": {"http-stream": {"content": f"{i}\n"}}}
                    for i in range(4)
                ]
                r = httpx.post(f"{cl.publish_url}/publish/", json={"items": items})
                assert r.status_code == 200, r.text
            # the age bound per prefix: the stream's expiry is its namespace's 1 s (+1 s),
            # the global 3600 s elsewhere
            ttl_tick = int(_redis(redis.port, "PTTL", "gc:h:tick:r")[1:].split(b"\r")[0])
            ttl_plain = int(_redis(redis.port, "PTTL", "gc:h:plain")[1:].split(b"\r")[0])
            assert 0 < ttl_tick <= 2000, ttl_tick
            assert ttl_plain > 3_000_000, ttl_plain
            assert len(_replay(cl, "plain").items) == 4
            # past 1 s the tick: history is gone on a read, the other is kept
            wait_for(lambda: not _replay(cl, "tick:r").items, 6, "tick:r not expired")
            assert len(_replay(cl, "plain").items) == 4
