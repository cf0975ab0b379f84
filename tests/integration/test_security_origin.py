"""Security issue 11, origin side, against a real broker and edge: a hostile origin written here
as a raw socket server sends interim responses and bytes after its responses; no response ever
crosses from one client to another, and the request the origin sees carries exactly the Host
that picked the route and no trailer.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from tests.integration.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ALICE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: session=ALICE\r\n"
    b"Content-Length: 13\r\n\r\nalice-private"
)
BOB = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nbob"
MALLORY = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=MALLORY\r\nContent-Length: 6\r\n\r\nsecret"


class HostileOrigin:
    """A keep-alive origin on a raw socket; ``log`` records ``(connection number, path, head)``.

    ``/alice``: ``103 Early Hints`` at once, the final ``200`` (ALICE's cookie and body) only
    once ``/bob`` was asked (on any connection) or more bytes came on this one (a request the
    edge should never have sent there), or after 5 s.  ``/bob``: a small 200.  ``/framed``: a
    200 and, in the same write, a second response nobody asked for.  ``/junk``: a 200 and
    garbage.  ``/echo``: a 200 whose body is the request head."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.log: list[tuple[int, str, bytes]] = []
        self.hints_sent = threading.Event()
        self.bob_seen = threading.Event()
        self._n = 0
        self._stop = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self._n += 1
            t = threading.Thread(target=self._serve, args=(c, self._n), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, c: socket.socket, n: int) -> None:
        buf = b""
        with c:
            c.settimeout(10)
            while not self._stop:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = c.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(buf) < length:
                    buf += c.recv(65536)
                buf = buf[length:]  # the body (the edge sends a length, never chunked)
                path = head.split(b" ", 2)[1].decode()
                self.log.append((n, path, head))
                try:
                    self._answer(c, path, head, bool(buf))
                except OSError:
                    return

    def _answer(self, c: socket.socket, path: str, head: bytes, more: bool) -> None:
        if path == "/alice":
            c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            self.hints_sent.set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not self.bob_seen.is_set() and not more:
                more = bool(select.select([c], [], [], 0.02)[0])
            c.sendall(ALICE)
        elif path == "/bob":
            self.bob_seen.set()
            c.sendall(BOB)
        elif path == "/framed":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + MALLORY)
        elif path == "/junk":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokgarbage\r\n\r\n")
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head))

    def conn_of(self, path: str) -> list[int]:
        return [n for n, p, _ in self.log if p == path]

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for t in self._threads:
            t.join(2)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """One request on a fresh connection (the edge closes after it); everything read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    origin = HostileOrigin()
    cluster = Cluster(tmp_path_factory.mktemp("secorigin"), [f"* 127.0.0.1:{origin.port}"])
    try:
        cluster.start()
        yield cluster.edge_ports[0], origin
    finally:
        codes = cluster.stop()
        origin.close()
    assert codes == [0, 0], codes


def test_early_hints_never_leak_the_final_response_to_the_next_client(env):
    port, origin = env
    first: dict = {}

    def alice() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(get("/alice"))
            # a broken edge relays the 103 at once (then pools the connection); a fixed one
            # sends nothing before the final response: this bounded wait is only for that
            if select.select([s], [], [], 1.0)[0]:
                first["early"] = s.recv(65536)
            first["ready"] = True
            out = first.get("early", b"")
            while chunk := s.recv(65536):
                out += chunk
            first["all"] = out

    t = threading.Thread(target=alice, daemon=True)
    t.start()
    assert origin.hints_sent.wait(10)
    deadline = time.monotonic() + 10
    while "ready" not in first and time.monotonic() < deadline:
        time.sleep(0.01)
    second = exchange(port, get("/bob"))
    t.join(10)
    assert b"ALICE" not in second and b"alice-private" not in second, second
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"\r\n\r\nbob"), second
    resp = first.get("all", b"")
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n"), resp  # the interim 103 is not the answer
    assert b"session=ALICE" in resp and resp.endswith(b"alice-private"), resp
    assert origin.conn_of("/bob")[-1] not in origin.conn_of("/alice")  # never the busy one


@pytest.mark.parametrize("path", ["/framed", "/junk"])
def test_bytes_after_a_framed_response_are_never_a_response(env, path):
    port, origin = env
    first = exchange(port, get(path))
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), first
    head, _, body = first.partition(b"\r\n\r\n")
    assert body == (b"hello" if path == "/framed" else b"ok"), first
    assert b"MALLORY" not in first and head.lower().count(b"content-length") == 1, first
    second = exchange(port, get("/bob"))
    assert second.endswith(b"\r\n\r\nbob") and b"MALLORY" not in second, second
    # the connection that carried extra bytes was closed, not pooled
    assert origin.conn_of("/bob")[-1] != origin.conn_of(path)[-1]


def test_duplicate_host_is_refused_before_any_origin_request(env):
    port, origin = env
    before = len(origin.log)
    resp = exchange(
        port,
        b"GET /echo HTTP/1.1\r\nHost: app.example\r\nHost: admin.internal\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert resp.startswith(b"HTTP/1.1 400 "), resp
    assert len(origin.log) == before


def test_chunked_trailers_never_reach_the_origin(env):
    port, origin = env
    resp = exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        b"Host: admin.internal\r\nX-Trailer: evil\r\n\r\n",
    )
    assert resp.startswith(b"HTTP/1.1 200 "), resp
    seen = origin.log[-1][2]
    assert b"admin.internal" not in seen and b"X-Trailer" not in seen, seen
    assert b"\r\nHost: app.example\r\n" in seen
