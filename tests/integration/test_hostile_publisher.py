"""Hostile publishers against a real broker and edge (issue 11 items 2, 3, 4, 8, 12).

A publisher cannot: make the edge patch a document to gigabytes or recurse out of its stack
(the broker refuses the publish with 400 and a reason), split a client response through a
reason or a header (400), put a header line into a session cursor (400), grow a channel's
history past its byte budget (413 per item).  A published ``hint`` does not end a stream
whose client is behind (its backlog keeps draining, then the next link is fetched).
Throughout, the edge keeps serving: a response hold gets its clean published answer after.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.helpers import free_port_block, wait_for
from tests.integration.cluster import Cluster, Origin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TIMEOUT_BODY = json.dumps({"a": "x" * 1000}).encode()
HIT: dict = {}


def o_poll(h):
    HIT["poll"] = HIT.get("poll", 0) + 1
    return (
        200,
        {
            "Grip-Hold": "response",
            "Grip-Channel": "lp",
            "Grip-Timeout": "60",
            "Content-Type": "application/json",
        },
        TIMEOUT_BODY,
    )


def o_stream(h):
    return (
        200,
        {
            "Grip-Hold": "stream",
            "Grip-Channel": "bk",
            "Content-Type": "text/plain",
            "Grip-Link": "</stream/next>; rel=next; timeout=0",
        },
        b"start\n",
    )


def o_next(h):
    HIT["next"] = HIT.get("next", 0) + 1
    return (
        200,
        {
            "Grip-Hold": "stream",
            "Grip-Channel": "bk",
            "Content-Type": "text/plain",
            "Grip-Link": "</stream/next>; rel=next; timeout=0",
        },
        b"next\n",
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with Origin({"/poll": o_poll, "/stream": o_stream, "/stream/next": o_next}) as origin:
        mport = free_port_block(1)
        with Cluster(
            tmp_path_factory.mktemp("hpub"),
            [f"* 127.0.0.1:{origin.port}"],
            edge_metrics_port=mport,
            update_on_first_subscription="false",
            client_buffer_bytes=64 << 20,
            history_max_bytes=4 << 20,
        ) as cluster:
            cluster.metrics_port = mport
            yield cluster, origin


def metrics(cluster) -> dict:
    text = httpx.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_held(cluster, mode, n):
    wait_for(
        lambda: (
            metrics(cluster).get(f'gripcast_edge_held_sessions{{mode="{mode}"}}', 0) >= n
            and metrics(cluster).get("gripcast_edge_channels_positioning", 1) == 0
        ),
        15,
    )


def publish(cluster, *items) -> httpx.Response:
    return httpx.post(cluster.publish_url + "/publish/", json={"items": list(items)}, timeout=10)


def deep(n: int):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


HOSTILE = [
    (
        "deep patch",
        {"http-response": {"body-patch": [{"op": "add", "path": "/d", "value": deep(600)}]}},
        400,
        "body-patch",
    ),
    (
        "many ops",
        {"http-response": {"body-patch": [{"op": "test", "path": "", "value": {}}] * 101}},
        400,
        "body-patch",
    ),
    (
        "split reason",
        {
            "http-response": {
                "reason": "OK\r\nSet-Cookie: session=ALICE\r\n\r\nHTTP/1.1 200 OK",
                "body": "x",
            }
        },
        400,
        "'reason'",
    ),
    ("header name", {"http-response": {"headers": [["X Evil", "1"]], "body": "x"}}, 400, "headers"),
    ("id header", {"id": "1\r\nX-Smuggled: yes", "http-stream": {"content": "x"}}, 400, "'id'"),
    (
        "prev-id request",
        {"prev-id": "1\r\n\r\nGET /admin HTTP/1.1", "http-stream": {"content": "x"}},
        400,
        "'prev-id'",
    ),
]


def held_poll_answer(cluster, item: dict) -> tuple[bytes, bytes, float]:
    """Hold a poll on channel lp, publish ``item`` to it; the (head, body, seconds) answered."""
    with socket.create_connection(("127.0.0.1", cluster.edge_ports[0]), timeout=15) as c:
        before = HIT.get("poll", 0)
        c.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: HIT.get("poll", 0) > before, 10)
        wait_held(cluster, "response", 1)
        t0 = time.monotonic()
        r = publish(cluster, {"channel": "lp", **item})
        assert r.status_code == 200, r.text
        data = b""
        while True:
            chunk = c.recv(65536)
            assert chunk, data
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"Content-Length: " in head:
                n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(body) >= n:
                    return head, body, time.monotonic() - t0


def test_a_patch_the_broker_cannot_judge_is_one_sessions_failed_patch(env):
    """A copy from the root doubles the document per op: the broker cannot know the document,
    so the edge's budget stops it (1 MiB) and that one poll gets the unpatched timeout body,
    quickly; before, 20 ops blocked the loop for seconds and 30 exhausted memory."""
    cluster, origin = env
    bomb = {
        "http-response": {
            "body-patch": [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(30)]
        }
    }
    head, body, took = held_poll_answer(cluster, bomb)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == TIMEOUT_BODY
    assert took < 5.0
    head, body, _ = held_poll_answer(
        cluster,
        {"http-response": {"body-patch": [{"op": "replace", "path": "/a", "value": "patched"}]}},
    )
    assert body == b'{"a":"patched"}'
    assert all(p.proc.poll() is None for p in cluster.procs)


@pytest.mark.parametrize("name,fmt,code,word", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_publishes_are_refused_and_the_edge_keeps_serving(env, name, fmt, code, word):
    cluster, origin = env
    r = publish(cluster, {"channel": "lp", **fmt})
    assert r.status_code == code and word in r.text, r.text
    # a held poll still gets the next clean publish, cleanly, from the same edge process
    head, body, _ = held_poll_answer(
        cluster,
        {
            "http-response": {
                "body-patch": [{"op": "replace", "path": "/a", "value": "patched"}],
                "headers": {"X-Pub": "yes"},
            }
        },
    )
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Pub: yes" in head
    assert body == b'{"a":"patched"}'
    assert all(p.proc.poll() is None for p in cluster.procs)


def test_item_size_cap(env):
    """An item over 1 MiB of payload is refused on the ZeroMQ input too (HTTP bodies are
    already capped at 1,000,000 bytes): a stream gets the small item after it, not the big."""
    import zmq

    cluster, _ = env
    r = publish(cluster, {"channel": "big", "http-stream": {"content": "x" * 1_000_001}})
    assert r.status_code == 400
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://127.0.0.1:{cluster.ports['push_in_port']}")
    c = socket.create_connection(("127.0.0.1", cluster.edge_ports[0]), timeout=15)
    try:
        c.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"start\n" not in data:
            data += c.recv(65536)
        wait_held(cluster, "stream", 1)
        big = {"channel": "bk", "formats": {"http-stream": {"content": "B" * ((1 << 20) + 1)}}}
        small = {"channel": "bk", "formats": {"http-stream": {"content": "after-big\n"}}}
        push.send(b"J" + json.dumps(big).encode())
        push.send(b"J" + json.dumps(small).encode())
        while b"after-big\n" not in data:
            got = c.recv(1 << 20)
            assert got, data[-200:]
            data += got
        assert b"BBBB" not in data
    finally:
        c.close()
        push.close()
        ctx.term()


def test_hint_keeps_a_backlogged_stream(env):
    cluster, origin = env
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(20)
    c.connect(("127.0.0.1", cluster.edge_ports[0]))
    try:
        c.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"start\n" not in data:
            data += c.recv(65536)
        wait_held(cluster, "stream", 1)
        # next links with timeout=0 (no idle window): the connection task waits on the client
        # through a readtimer.Waker (no cancel scope), which a hint wakes with notify_closing;
        # a first hint and its next link first, as a warm-up
        before = HIT.get("next", 0)
        assert (
            publish(cluster, {"channel": "bk", "http-stream": {"action": "hint"}}).status_code
            == 200
        )
        while b"next\n" not in data:
            data += c.recv(65536)
        wait_for(lambda: HIT.get("next", 0) == before + 1, 10)
        chunk = "y" * 500_000
        for _ in range(24):  # 12 MB with the client not reading: past every kernel buffer
            r = publish(cluster, {"channel": "bk", "http-stream": {"content": chunk}})
            assert r.status_code == 200
        wait_for(lambda: metrics(cluster).get("gripcast_edge_lagging_connections", 0) >= 1, 15)
        before = HIT.get("next", 0)
        assert (
            publish(cluster, {"channel": "bk", "http-stream": {"action": "hint"}}).status_code
            == 200
        )
        time.sleep(0.5)  # let the hint reach the edge while the backlog is still there
        assert metrics(cluster).get("gripcast_edge_lagging_connections", 0) >= 1
        total = 0
        tail = b""
        while b"next\n" not in tail:
            got = c.recv(1 << 20)
            assert got, f"stream ended after {total} bytes (the hint killed it)"
            total += len(got)
            tail = (tail + got)[-64:]
        assert total >= 24 * 500_000
        assert HIT.get("next", 0) == before + 1
    finally:
        c.close()
