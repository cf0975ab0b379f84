"""Hostile-input rules of the client request parser (no sockets, time passed in)."""
from __future__ import annotations

import pytest

from broker.config import Config
from edge.httpserver import KEEPALIVE_IDLE_S, Connection


class App:
    cfg = Config(client_header_bytes=1024, client_body_bytes=100, client_head_timeout_s=5.0)


def conn() -> Connection:
    return Connection(App(), sock=None, addr=None)


def test_head_deadlines():
    c = conn()
    assert c.read_deadline(100.0) == 105.0  # a fresh connection: first head within 5 s
    assert c.read_deadline(103.0) == 105.0  # ... counted from when it opened
    c.now = 104.0
    c.feed(b"GET / HTTP/1.1\r\nHo")
    assert c.read_deadline(104.5) == 109.0  # a begun head: 5 s from its first byte
    c.feed(b"st: h\r\nContent-Length: 10\r\n\r\nab")
    assert c.read_deadline(106.0) == 111.0  # a body may pause 5 s between reads
    c.feed(b"cdefghij")
    assert len(c.queue) == 1
    c.cur, c.fresh, c.idle_since = None, False, 200.0  # answered: an idle keep-alive
    assert c.read_deadline(250.0) == 200.0 + KEEPALIVE_IDLE_S


@pytest.mark.parametrize("data, status", [
    (b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", 405),
    (b"GET evil:443 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET ftp://evil/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),  # refused before the body
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"a" * 101 + b"\r\n0\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),  # llhttp: strict
])
def test_rejections(data, status):
    c = conn()
    c.feed(data)
    assert c.reject is not None and c.reject.status == status, c.reject
    assert c.queue == []


@pytest.mark.parametrize("data", [
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://example.com/x HTTP/1.1\r\nHost: other\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"a" * 100,
])
def test_accepted(data):
    c = conn()
    c.feed(data)
    assert c.reject is None and len(c.queue) == 1
