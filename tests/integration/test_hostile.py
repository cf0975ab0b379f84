"""Hostile clients against a real edge: every limit answers clearly over raw sockets, requests
only ever reach the configured route's origin, and a well-behaved stream client is never
disturbed meanwhile.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from gripcontrol import GripPubControl, create_grip_channel_header

from tests.helpers import wait_for
from tests.integration.cluster import Cluster, Origin, StreamClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HEAD_TIMEOUT_S = 1.0
MAXCONN = 12


class Trap:
    """A listener standing for "another host": it must never be connected to."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            c.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def raw(port: int, data: bytes, *, timeout: float = 5.0, shut: bool = False) -> bytes:
    """Send ``data`` on a fresh connection and read until the edge closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                raise AssertionError(f"connection reset; got {out!r}") from None
            if not chunk:
                break
            out += chunk
        return out


def status(resp: bytes) -> int:
    assert resp.startswith(b"HTTP/1."), resp[:200]
    return int(resp.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    trap = Trap()
    evil = f"http://127.0.0.1:{trap.port}"

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

    def echo(req):
        return (
            200,
            {"Content-Type": "text/plain"},
            f"{req.command} {req.path} {req.headers.get('Host')}".encode(),
        )

    def evil_link(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("evil"),
                "Grip-Link": f"<{evil}/steal>; rel=next; timeout=1, <{evil}/gone>; rel=gone",
            },
            b"[evil]\n",
        )

    def evil_gone(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("evilgone"),
                "Grip-Link": f"<{evil}/gone>; rel=gone",
            },
            b"[evil-gone]\n",
        )

    def ok_gone(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("okgone"),
                "Grip-Link": "</ok-gone>; rel=gone",
            },
            b"[ok-gone]\n",
        )

    def ok_link(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("okl"),
                "Grip-Link": "</next>; rel=next; timeout=1",
            },
            b"[ok]\n",
        )

    def next_(req):
        return (
            200,
            {
                "Content-Type": "text/plain",
                "Grip-Hold": "stream",
                "Grip-Channel": create_grip_channel_header("okl"),
            },
            b"[next]\n",
        )

    origin = Origin(
        {
            "/stream": stream,
            "/echo": echo,
            "/evil-link": evil_link,
            "/ok-link": ok_link,
            "/next": next_,
            "/evil-gone": evil_gone,
            "/ok-gone-hold": ok_gone,
        }
    ).__enter__()
    cluster = Cluster(
        tmp_path_factory.mktemp("hostile"),
        [f"* 127.0.0.1:{origin.port}"],
        client_head_timeout_s=HEAD_TIMEOUT_S,
        client_maxconn=MAXCONN,
        client_body_bytes=1000,
        client_header_bytes=2048,
    )
    try:
        cluster.start()
        good = StreamClient(cluster.url("/stream"))
        good.read_until(b"[open]\n")
        pub = GripPubControl({"control_uri": cluster.publish_url})
        yield cluster, origin, trap, good, pub
        good.close()
    finally:
        codes = cluster.stop()
        origin.__exit__()
        trap.close()
    assert codes == [0, 0], codes  # neither process crashed under any of it


def still_served(cluster, good, pub, tag: str) -> None:
    """The well-behaved stream client gets a message published now, promptly."""
    pub.publish_http_stream("good", f"still here {tag}\n")
    good.read_until(f"still here {tag}\n".encode(), timeout=5)


@pytest.mark.parametrize(
    "name, data, code",
    [
        (
            "431 header size",
            b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",
            431,
        ),
        (
            "431 many headers",
            b"GET /echo HTTP/1.1\r\nHost: h\r\n" + b"X-A: b\r\n" * 400 + b"\r\n",
            431,
        ),
        ("414 uri", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (
            "413 declared",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000,
            413,
        ),
        (
            "413 chunked",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"200\r\n"
            + b"a" * 512
            + b"\r\n"
            + b"200\r\n"
            + b"a" * 512
            + b"\r\n" * 2
            + b"0\r\n\r\n",
            413,
        ),
        (
            "CL+TE",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        (
            "TE+CL",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        (
            "two CL",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        (
            "CL list",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 38\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        (
            "bad chunk size",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            "chunk size overflow",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            "TE obfuscated",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n"
            b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        (
            "space before colon",
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length : 38\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        (
            "bare LF in header",
            b"GET /echo HTTP/1.1\r\nHost: h\r\nX: a\rGET /smuggled HTTP/1.1\r\n\r\n",
            400,
        ),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), 400),
        ("CONNECT", b"CONNECT 127.0.0.1:{trap} HTTP/1.1\r\nHost: 127.0.0.1:{trap}\r\n\r\n", 405),
        ("authority form", b"GET 127.0.0.1:{trap} HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ],
)
def test_limits_and_smuggling_answer_clearly(env, name, data, code):
    cluster, origin, trap, good, pub = env
    before = len(origin.requests)
    resp = raw(cluster.edge_ports[0], data.replace(b"{trap}", str(trap.port).encode()))
    assert status(resp) == code, (name, resp[:300])
    assert b"Connection: close" in resp or b"connection: close" in resp.lower()
    assert resp.count(b"HTTP/1.") == 1, "a second (smuggled) request was answered"
    assert not any(p == "/smuggled" for _, p, _, _ in origin.requests[before:])
    assert trap.accepted == 0
    still_served(cluster, good, pub, name)


def test_absolute_form_only_reaches_the_routes_origin(env):
    cluster, origin, trap, good, pub = env
    resp = raw(
        cluster.edge_ports[0],
        f"GET http://127.0.0.1:{trap.port}/echo HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{trap.port}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status(resp) == 200
    assert resp.endswith(f"GET /echo 127.0.0.1:{trap.port}".encode())  # served by the origin
    assert trap.accepted == 0


def test_next_and_gone_links_cannot_leave_the_origin(env):
    cluster, origin, trap, good, pub = env
    evil = StreamClient(cluster.url("/evil-link"))
    ok = StreamClient(cluster.url("/ok-link"))
    evil.read_until(b"[evil]\n")
    ok.read_until(b"[ok]\n")
    # both links have timeout=1 and their channels stay quiet, so both holds fetch them: the
    # relative one reaches the origin (so this test can see a followed link) ...
    ok.read_until(b"[next]\n", timeout=10)
    # ... the absolute one to another host is refused, and the edge ends that stream: the
    # positive signal that its link was handled (a followed one would have reached the trap)
    evil.read_to_end(timeout=10)
    assert evil.ended, "the stream with a next link to another host was not ended"
    assert trap.accepted == 0
    evil.close()
    ok.close()
    # rel=gone links, posted when the client leaves: the other host's is refused; the
    # origin's own, from a client that leaves just after, is posted (the positive signal;
    # both are local connects, so a followed evil one would have reached the trap by then)
    clients = []
    for path, head in (("/evil-gone", b"[evil-gone]\n"), ("/ok-gone-hold", b"[ok-gone]\n")):
        s = socket.create_connection(("127.0.0.1", cluster.edge_ports[0]), timeout=5)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        got = b""
        while head not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        clients.append(s)
    for s in clients:
        s.close()
    wait_for(
        lambda: any(p == "/ok-gone" for _, p, _, _ in origin.requests),
        10,
        "the origin's own gone link was never posted",
    )
    assert trap.accepted == 0
    still_served(cluster, good, pub, "links")


def test_slowloris_gets_408_and_idle_connections_are_closed(env):
    cluster, origin, trap, good, pub = env
    port = cluster.edge_ports[0]
    # a connection that never sends anything is closed after the head timeout
    t0 = time.monotonic()
    assert raw(port, b"", timeout=HEAD_TIMEOUT_S * 5) == b""
    assert time.monotonic() - t0 < HEAD_TIMEOUT_S * 4
    # a head dripped one byte at a time gets 408 once its deadline passes
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\n")
        t0 = time.monotonic()
        got = b""
        while time.monotonic() - t0 < HEAD_TIMEOUT_S * 4:
            try:
                s.sendall(b"X")
            except OSError:
                break
            s.settimeout(0.2)
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            except TimeoutError:
                pass
        assert status(got) == 408, got
    still_served(cluster, good, pub, "slowloris")


def test_connection_limit_answers_503(env):
    cluster, origin, trap, good, pub = env
    port = cluster.edge_ports[0]
    held: list[socket.socket] = []
    refused = None
    try:
        # hold streams until the edge is full: at most MAXCONN connections, then a clear 503
        for _ in range(MAXCONN + 1):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(s)
            s.sendall(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
            got = b""
            while b"[open]" not in got and b"Too many" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            if b"[open]" not in got:
                refused = got
                break
        assert refused is not None and status(refused) == 503, refused
        assert b"Too many connections" in refused
        assert len(held) <= MAXCONN  # the good client holds one slot too
        still_served(cluster, good, pub, "full")
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while True:  # slots come back as the edge notices the streams closing
        resp = raw(port, b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        if status(resp) == 200:
            break
        assert time.monotonic() < deadline, resp
        time.sleep(0.1)
