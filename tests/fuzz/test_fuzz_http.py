"""Client HTTP/1.1 request parsing (edge/http1/connection.py) under hostile bytes, sans-IO.

``Connection.feed`` is the whole parsing path (httptools + our callbacks + limits) and never
touches the socket, so it is driven directly.  Whatever arrives, ``feed`` must not raise: each
request either parses or the connection records one clear rejection (status 400/405/413/414/431).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.config import Config
from edge.http1.connection import Connection
from tests.fuzz.strategies import FUZZ, header_value, nasty_number, token

ANSWERS = {400, 405, 413, 414, 431}


class App:
    cfg = Config(client_header_bytes=2048, client_body_bytes=4096)


def feed_all(chunks) -> Connection:
    conn = Connection(App(), sock=None, addr=None)
    for c in chunks:
        conn.feed(c)
        if conn.reject is not None or conn.upgrade:
            break
    return conn


def check(conn: Connection) -> None:
    if conn.reject is not None:
        assert conn.reject.status in ANSWERS, conn.reject.status
        assert conn.reject.text and "\n" not in conn.reject.text
    for req in conn.queue:
        assert req.method
        assert len(req.body) <= App.cfg.client_body_bytes


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 4000), max_size=6))
def test_random_bytes(data, cuts):
    check(feed_all(split(data, cuts)))


methods = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"PRI", b"G ET", b"get", b"\x00", b"DELETE"]
)
targets = st.one_of(
    st.sampled_from(
        [
            b"/",
            b"*",
            b"http://evil.example/x",
            b"evil.example:443",
            b"//x",
            b"/a?b=c#d",
            b"/%00",
            b"/\xff",
            b"",
        ]
    ),
    st.binary(max_size=50),
)
names = st.one_of(
    st.sampled_from(
        [
            b"Content-Length",
            b"Transfer-Encoding",
            b"Host",
            b"Expect",
            b"Connection",
            b"Upgrade",
            b"content-length",
            b"Content-Length ",
            b" Transfer-Encoding",
            b"X",
        ]
    ),
    token.map(lambda t: t.encode()),
)
values = st.one_of(
    nasty_number.map(str.encode),
    st.sampled_from(
        [
            b"chunked",
            b"chunked, identity",
            b"identity, chunked",
            b"gzip",
            b"100-continue",
            b"close",
            b"keep-alive",
            b"websocket",
            b"chunked\x00",
            b" chunked",
        ]
    ),
    header_value.map(lambda v: v.encode("utf-8", "surrogateescape")),
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.tuples(
            st.one_of(
                nasty_number, st.sampled_from(["ffffffffffffffffff", "g", "0", "1;ext=x", " 5"])
            ),
            st.binary(max_size=20),
        ),
        max_size=4,
    ).map(lambda cs: b"".join(n.encode() + b"\r\n" + d + b"\r\n" for n, d in cs) + b"0\r\n\r\n"),
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/9", b""])
eols = st.sampled_from([b"\r\n", b"\n", b"\r"])


@st.composite
def requests(draw):
    eol = draw(eols)
    head = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + eol
    for name, value in draw(st.lists(st.tuples(names, values), max_size=8)):
        head += name + b": " + value + eol
    return head + eol + draw(bodies)


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 4000), max_size=6))
def test_structured_requests(reqs, cuts):
    check(feed_all(split(b"".join(reqs), cuts)))


@FUZZ
@given(st.sampled_from([b"Content-Length", b"content-length"]), nasty_number, nasty_number)
def test_content_length_conflicts_never_pass(name, a, b):
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\n"
        + name
        + b": "
        + a.encode()
        + b"\r\n"
        + name
        + b": "
        + b.encode()
        + b"\r\n\r\n"
    )
    conn = feed_all([data])
    check(conn)
    if a.strip() != b.strip():
        # two different lengths: never a request to proxy
        assert conn.queue == [] and (conn.reject is not None and conn.reject.status == 400)


@FUZZ
@given(st.sampled_from([b"chunked", b"gzip, chunked", b"Chunked", b"identity"]), nasty_number)
def test_length_with_transfer_encoding_is_rejected(te, cl):
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
        + te
        + b"\r\nContent-Length: "
        + cl.encode()
        + b"\r\n\r\n0\r\n\r\n"
    )
    conn = feed_all([data])
    check(conn)
    assert conn.queue == [] and conn.reject is not None and conn.reject.status == 400
