"""Idle held HTTP streams park (edge.parking): no task while idle, everything else as before.

One broker + one edge (real processes) for the module; clients are raw sockets, so the tests
see the bytes and the connection's end exactly.  The edge's /metrics tells how many streams
are parked and how many trio tasks it runs.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from gripcontrol import GripPubControl, HttpStreamFormat, create_grip_channel_header
from prometheus_client.parser import text_string_to_metric_families
from pubcontrol import Item

from edge.readtimer import TICK_S
from edge.server import POSITION_ASK_AFTER_S
from tests.helpers import free_port_block, wait_for
from tests.integration.cluster import Cluster, Origin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _stream(channel: str, keep_alive: str | None = None):
    def handler(req):
        headers = {
            "Content-Type": "text/event-stream",
            "Grip-Hold": "stream",
            "Grip-Channel": create_grip_channel_header(channel),
        }
        if keep_alive is not None:
            headers["Grip-Keep-Alive"] = keep_alive
        return 200, headers, b":open\n\n"

    return handler


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mport = free_port_block(2)
    routes = {
        "/idle": _stream("park-idle"),
        "/reuse": _stream("park-reuse"),
        "/ka": _stream("park-ka", "\\n; format=cstring; timeout=1"),
        "/opener": _stream("park-opener"),
        "/marker": _stream("park-marker"),
    }
    with (
        Origin(routes) as origin,
        Cluster(
            tmp_path_factory.mktemp("parking"),
            [f"* 127.0.0.1:{origin.port}"],
            metrics_port=mport,
            edge_metrics_port=mport + 1,
        ) as cluster,
    ):
        wait_for(
            lambda: _get(f"http://127.0.0.1:{mport + 1}/ready") == 200, what="edge metrics ready"
        )
        yield cluster, mport + 1, GripPubControl({"control_uri": cluster.publish_url})


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def open_stream(cluster: Cluster, path: str) -> tuple[socket.socket, bytes]:
    """A raw client: the request, then everything up to the initial body."""
    s = socket.create_connection(("127.0.0.1", cluster.edge_ports[0]), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return s, read_until(s, b":open\n\n")


def read_until(s: socket.socket, text: bytes, got: bytes = b"") -> bytes:
    deadline = time.monotonic() + 10
    while text not in got:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(65536)
        if not data:
            raise EOFError(f"closed before {text!r}: {got!r}")
        got += data
    return got


def parked(port: int) -> float:
    return metrics(port)["gripcast_edge_parked_connections"]


def held_streams(port: int) -> float:
    return metrics(port)["gripcast_edge_held_sessions{mode=stream}"]


def test_new_streams_on_a_known_channel_connect_without_a_task(env):
    """edge.opener: a new stream is run by the opener from the accept to the park and never
    needs a task: the channel's first client too, which waits for the broker's position of
    the channel on a gate in the opener (edge.opener.Gate)."""
    cluster, mport, pub = env
    opened = "gripcast_edge_opened_without_task_total"
    donated = "gripcast_edge_opener_donations_total"
    start = metrics(mport)
    first, _ = open_stream(cluster, "/opener")  # a channel new to the edge
    wait_for(lambda: held_streams(mport) >= 1, what="the first stream held")
    before = metrics(mport)
    assert before[opened] - start[opened] == 1
    assert before[donated] == start[donated]
    n = 20
    clients = [open_stream(cluster, "/opener")[0] for _ in range(n)]
    m = metrics(mport)
    assert m[opened] - before[opened] == n
    assert m[donated] == before[donated]
    pub.publish_http_stream("park-opener", "data: hi\n\n")
    for c in [first, *clients]:
        assert b"data: hi\n\n" in read_until(c, b"data: hi\n\n")
        c.close()


def broker_requests(port: int) -> float:
    return sum(
        v for k, v in metrics(port).items() if k.startswith("gripcast_edge_broker_requests_total")
    )


def test_a_new_channel_is_positioned_by_the_brokers_marker_without_a_request(env):
    """edge.server: a new channel's position request waits for the broker's marker on
    subscribe, which comes first: the stream is held and no request goes to the broker."""
    cluster, mport, pub = env
    before = broker_requests(mport)
    c, _ = open_stream(cluster, "/marker")  # a channel new to the edge: held once positioned
    time.sleep(POSITION_ASK_AFTER_S + 2 * TICK_S)  # the request would have gone out by now
    assert broker_requests(mport) == before
    pub.publish_http_stream("park-marker", "data: m\n\n")
    assert b"data: m\n\n" in read_until(c, b"data: m\n\n")
    c.close()


def test_idle_streams_park_without_tasks_and_get_messages_and_leave(env):
    cluster, mport, pub = env
    wait_for(lambda: parked(mport) == 0, what="nothing parked at start")
    before = metrics(mport)
    n = 40
    clients = [open_stream(cluster, "/idle")[0] for _ in range(n)]
    wait_for(lambda: parked(mport) == n, what=f"{n} streams parked")
    m = metrics(mport)
    # no task per idle held stream (it was one task each before edge.parking)
    assert m["gripcast_edge_trio_tasks"] - before["gripcast_edge_trio_tasks"] < 5
    assert m["gripcast_edge_held_sessions{mode=stream}"] == n
    pub.publish_http_stream("park-idle", "data: hello\n\n")
    for c in clients:
        assert b"data: hello\n\n" in read_until(c, b"data: hello\n\n")
    assert parked(mport) == n  # delivery wrote to the fds: nobody woke
    # clients that leave are seen at once: their session and connection are gone
    for c in clients[: n // 2]:
        c.close()
    wait_for(lambda: parked(mport) == n - n // 2, timeout=5, what="left clients unparked")
    wait_for(lambda: held_streams(mport) == n - n // 2, timeout=5, what="their sessions removed")
    assert metrics(mport)["gripcast_edge_connections{transport=http}"] == n - n // 2
    for c in clients[n // 2 :]:
        c.close()
    wait_for(lambda: parked(mport) == 0, timeout=5, what="all unparked")
    wait_for(
        lambda: metrics(mport)["gripcast_edge_connections{transport=http}"] == 0,
        timeout=5,
        what="all connections closed",
    )


def test_published_close_wakes_a_parked_stream_and_the_connection_goes_on(env):
    cluster, mport, pub = env
    c, _ = open_stream(cluster, "/reuse")
    wait_for(lambda: parked(mport) >= 1, what="parked")
    pub.publish_http_stream("park-reuse", "data: one\n\n")
    got = read_until(c, b"data: one\n\n")
    pub.publish("park-reuse", Item(HttpStreamFormat(close=True)))
    got = read_until(c, b"0\r\n\r\n", got)  # the final chunk: the response is complete
    # the same connection serves the next request (the woken task went on with it)
    c.sendall(b"GET /reuse HTTP/1.1\r\nHost: test\r\n\r\n")
    again = read_until(c, b":open\n\n")
    assert again.startswith(b"HTTP/1.1 200")
    wait_for(lambda: parked(mport) >= 1, what="parked again")
    pub.publish_http_stream("park-reuse", "data: two\n\n")
    assert b"data: two\n\n" in read_until(c, b"data: two\n\n", again)
    c.close()
    wait_for(lambda: parked(mport) == 0, timeout=5, what="unparked")


def test_bytes_from_a_parked_client_wake_it(env):
    cluster, mport, pub = env
    c, _ = open_stream(cluster, "/reuse")
    wait_for(lambda: parked(mport) == 1, what="parked")
    parks = metrics(mport)["gripcast_edge_parks_total"]
    c.sendall(b"GET /re")  # part of a pipelined head: read, then parked again
    wait_for(
        lambda: metrics(mport)["gripcast_edge_parks_total"] == parks + 1,
        what="parked again after reading",
    )
    assert parked(mport) == 1
    # a whole pipelined head: a hold without a deadline lets the client go (as before)
    c.sendall(b"use HTTP/1.1\r\nHost: test\r\n\r\n")
    c.settimeout(5)
    data = c.recv(65536)
    while data:
        data = c.recv(65536)
    wait_for(lambda: parked(mport) == 0, timeout=5, what="let go")
    c.close()


def test_a_client_gone_before_the_first_park_is_let_go(env):
    """A hold's first park does not read a plain socket (``Connection.read_held``): the
    parker's epoll (readiness, armed by the park) must see a hang-up that came before it, and
    end the hold."""
    cluster, mport, pub = env
    wait_for(lambda: parked(mport) == 0, what="nothing parked at start")
    clients = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", cluster.edge_ports[0]), timeout=10)
        s.sendall(b"GET /idle HTTP/1.1\r\nHost: test\r\n\r\n")
        s.shutdown(socket.SHUT_WR)  # the FIN follows the request, before the hold parks
        clients.append(s)
    for s in clients:
        got = read_until(s, b":open\n\n")
        assert got.startswith(b"HTTP/1.1 200")
        s.settimeout(5)
        while s.recv(65536):  # the edge closes its side: EOF, not a timeout
            pass
        s.close()
    wait_for(lambda: parked(mport) == 0, timeout=5, what="none left parked")
    wait_for(lambda: held_streams(mport) == 0, timeout=5, what="their sessions removed")


def test_keep_alives_reach_a_parked_stream(env):
    cluster, mport, pub = env
    c, got = open_stream(cluster, "/ka")
    wait_for(lambda: parked(mport) == 1, what="parked")
    # the keep-alive (a "\n", chunked; timeout=1 s) comes from the timer wheel, twice
    got = read_until(c, b"1\r\n\n\r\n" * 2, got[got.index(b":open\n\n") + 7 :])
    assert parked(mport) == 1
    c.close()
    wait_for(lambda: parked(mport) == 0, timeout=5, what="unparked")
