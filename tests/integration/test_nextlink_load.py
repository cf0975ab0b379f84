"""Next links under load (issue 13): a ``recover`` over 2,000 held streams that share one next
link does not send 2,000 simultaneous requests to the origin.  Pushpin's update limiter (10
batches of at most 100 sessions a second) and auto-share (identical fetches in flight share one
origin request) bound what the origin sees; every stream still gets the link's body."""

from __future__ import annotations

import selectors
import socket
import threading
import time

import httpx
import pytest

from tests.integration.cluster import Cluster, Origin

pytestmark = [pytest.mark.integration]

STREAMS = 2000


class _Gauge:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.max = self.total = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.total += 1
            self.max = max(self.max, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def _read_all(socks: list[socket.socket], needle: bytes, timeout: float) -> int:
    """Read every socket until ``needle`` is in what it sent; how many got it."""
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    done = 0
    deadline = time.monotonic() + timeout
    while done < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            data = s.recv(65536)
            bufs[s] += data
            if needle in bufs[s] or not data:
                sel.unregister(s)
                done += needle in bufs[s]
    sel.close()
    return done


@pytest.mark.timeout(90)
def test_recover_over_2000_streams_is_rate_limited_and_shared(tmp_path):
    gauge = _Gauge()

    def stream(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": "load",
                "Grip-Link": "</load/next?client=x>; rel=next",
            },
            b"[open]\n",
        )

    def nxt(req):
        with gauge:
            time.sleep(0.05)  # an origin that takes a moment: overlapping fetches would show
        return (
            200,
            {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": "load"},
            b"[next]\n",
        )

    with Origin({"/load": stream, "/load/next": nxt}) as origin:
        origin.httpd.socket.listen(STREAMS)  # http.server's backlog of 5 would drop connects
        with Cluster(
            tmp_path, [f"* 127.0.0.1:{origin.port}"], update_on_first_subscription="false"
        ) as cluster:
            socks = []
            try:
                for _ in range(STREAMS):
                    s = socket.create_connection(("127.0.0.1", cluster.edge_ports[0]), timeout=10)
                    s.sendall(b"GET /load HTTP/1.1\r\nHost: example.com\r\n\r\n")
                    socks.append(s)
                assert _read_all(socks, b"[open]\n", 30) == STREAMS
                started = time.monotonic()
                r = httpx.post(cluster.publish_url + "/recover", content=b"", timeout=5)
                assert r.status_code == 200
                assert _read_all(socks, b"[next]\n", 40) == STREAMS
                elapsed = time.monotonic() - started
            finally:
                for s in socks:
                    s.close()
    # 2,000 sessions: 20 batches of 100, one every 100 ms (the first after one interval)
    assert elapsed >= 1.9, elapsed
    # each batch's 100 identical fetches share one origin request
    assert gauge.total <= 2 * STREAMS // 100, gauge.total
    assert gauge.max <= 3, gauge.max
    print(f"origin requests: {gauge.total}, at most {gauge.max} at once, {elapsed:.2f}s")
