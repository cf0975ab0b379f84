"""Request building toward the origin, client response bytes, and request parsing (no sockets)."""

from __future__ import annotations

import pytest

from broker.config import Config
from edge.grip.instruct import Hold
from edge.http1 import responses
from edge.http1.connection import Connection
from edge.origin.client import OriginClient
from edge.routes import parse_routes

CLIENT_HEADERS = [
    (b"Host", b"client.example:7999"),
    (b"Connection", b"keep-alive"),
    (b"Keep-Alive", b"5"),
    (b"Accept-Encoding", b"gzip"),
    (b"Content-Encoding", b"gzip"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Expect", b"100-continue"),
    (b"Grip-Sig", b"forged"),
    (b"grip-last", b"x"),
    (b"X-Forwarded-For", b"1.2.3.4"),
    (b"Cookie", b"a=b"),
    (b"Content-Length", b"999"),
]


def request_lines(
    route_line: str,
    method=b"GET",
    path=b"/p?q=1",
    body=b"",
    sig="tok",
    client: OriginClient | None = None,
):
    route = parse_routes([route_line]).routes[0]
    client = OriginClient() if client is None else client
    raw = client.build_request(route, route.targets[0], method, path, CLIENT_HEADERS, body, sig=sig)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines[0], lines[1:], rest


def test_pushpin_header_rules():
    start, headers, body = request_lines("* o:80")
    assert start == b"GET /p?q=1 HTTP/1.1"
    assert headers[0] == b"Host: client.example:7999"
    names = [h.split(b":")[0].lower() for h in headers]
    for gone in (
        b"keep-alive",
        b"accept-encoding",
        b"content-encoding",
        b"transfer-encoding",
        b"expect",
        b"content-length",
    ):
        assert gone not in names
    assert b"Grip-Sig: tok" in headers and b"grip-last: x" not in headers
    assert (
        b"Grip-Feature: status, link:next, link:gone, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst"
        in headers
    )
    assert b"X-Forwarded-For: 1.2.3.4" in headers and b"Cookie: a=b" in headers
    assert b"connection" not in names and body == b""  # kept alive (edge.origin.pool)


def test_connection_close_when_origin_keepalive_is_off():
    client = OriginClient(idle_s=0)
    _, headers, _ = request_lines("* o:80", client=client)
    assert headers[-1] == b"Connection: close"
    client.pool.set_idle_s(30)  # SIGHUP turned it back on
    _, headers, _ = request_lines("* o:80", client=client)
    assert b"Connection: close" not in headers


def test_host_override_headers_and_path_rewrite():
    start, headers, _ = request_lines(
        "*,path_beg=/p,replace_beg=/new,header=Cookie:,header=X-Route:r o:80,host=origin.example"
    )
    assert start == b"GET /new?q=1 HTTP/1.1"
    assert headers[0] == b"Host: origin.example"
    assert b"X-Route: r" in headers and not any(h.startswith(b"Cookie") for h in headers)
    _, headers, _ = request_lines("*,as_host=internal:1 o:80")
    assert headers[0] == b"Host: internal:1"


def test_body_and_no_grip():
    _, headers, body = request_lines("*,no_grip o:80", method=b"POST", body=b"abc", sig=None)
    assert b"Content-Length: 3" in headers and body == b"abc"
    assert not any(h.lower().startswith(b"grip-") for h in headers)


def test_error_response_shape():
    data = responses.error(502, "Route not found")
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Content-Type: text/plain\r\n" in data and b"Content-Length: 16\r\n" in data
    assert b"Connection: close" in data and data.endswith(b"\r\n\r\nRoute not found\n")


def test_stream_head_and_published_response():
    hold = Hold(
        mode="stream", headers=(("Content-Type", "text/event-stream"),), code=200, reason="OK"
    )
    head = responses.stream_head(hold, chunked=True)
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n"
    )
    hold = Hold(
        mode="response", headers=(("Content-Type", "text/plain"), ("X-Keep", "1")), body=b"timeout"
    )
    fmt = {
        "action": "send",
        "code": 201,
        "reason": "",
        "headers": [["Content-Type", "app/x"], ["Grip-Hold", "x"], ["X-Pub", "yes"]],
        "body": b"pub",
    }
    data = responses.published(hold, fmt)
    assert data.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"X-Keep: 1\r\nContent-Type: app/x\r\nX-Pub: yes\r\nContent-Length: 3\r\n" in data
    assert b"Grip-" not in data and data.endswith(b"\r\n\r\npub")
    assert responses.timeout(hold).endswith(b"Content-Length: 7\r\n\r\ntimeout")


class FakeApp:
    cfg = Config(client_header_bytes=1024, client_buffer_bytes=2048, client_body_bytes=2048)


def parse(*chunks: bytes) -> Connection:
    conn = Connection(FakeApp(), sock=None, addr=None)
    for c in chunks:
        conn.feed(c)
    return conn


def test_pipelined_requests_in_order():
    conn = parse(
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-",
        b"Length: 3\r\n\r\nxyzGET /c HTTP/1.0\r\n\r\n",
    )
    assert [(r.method, r.url, bytes(r.body)) for r in conn.queue] == [
        (b"GET", b"/a", b""),
        (b"POST", b"/b", b"xyz"),
        (b"GET", b"/c", b""),
    ]
    assert conn.queue[0].keep_alive and conn.queue[0].host == b"h"
    assert not conn.queue[2].keep_alive and not conn.queue[2].http11


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 3000\r\n\r\n" + b"a" * 3000, 413),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
)
def test_bad_requests_are_rejected(data, status):
    conn = parse(data)
    assert conn.reject is not None and conn.reject.status == status
    assert conn.queue == []


def test_unfinished_oversized_head_is_rejected():
    conn = parse(b"GET / HTTP/1.1\r\nX-Big: ", *([b"a" * 65536] * 2))
    assert conn.reject is not None and conn.reject.status == 431
