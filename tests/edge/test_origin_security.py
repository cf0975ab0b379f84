"""Security issue 11, the origin side (no sockets): every request head toward an origin is
checked at one boundary, interim 1xx responses are skipped, bytes after a response are never
read as a response, and the client request parser refuses a second Host and drops trailers."""

from __future__ import annotations

import httptools
import pytest
import trio
import trio.testing
from wsproto.utilities import generate_accept_token

from broker.config import Config
from broker.errors import ConfigError
from edge.grip.holds import grip_last
from edge.origin.client import OriginClient, RequestHeadError, ResponseHead
from edge.routes import parse_routes
from edge.upstream import Upstream
from edge.ws.over_http import woh_headers
from edge.ws.proxy import WsOrigin, client_handshake
from tests.edge.test_http import parse

SMUGGLE = "1\r\nX-Smuggled: yes"


def build_request(*args, **kw) -> bytes:
    return OriginClient().build_request(*args, **kw)


def encode_request_head(*args) -> bytes:
    return OriginClient().encode_request_head(*args)


def _route(line: str = "* o:80"):
    route = parse_routes([line]).routes[0]
    return route, route.targets[0]


# -- item 4: one validation for every request head --------------------------------------------


def test_grip_last_from_a_published_id_with_crlf_is_never_sent():
    route, target = _route()
    extra = grip_last(["news"], "", {"news": SMUGGLE})
    with pytest.raises(RequestHeadError) as err:
        build_request(
            route, target, b"GET", b"/next", [(b"Host", b"h")], b"", sig=None, extra=extra
        )
    assert "Grip-Last" in err.value.reason and err.value.status == 502


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X-A", b"v\r\nX-Smuggled: yes")],
        [(b"X-A", b"v\nX-Smuggled: yes")],
        [(b"X-A", b"v\rw")],
        [(b"X-A", b"v\x00w")],
        [(b"X-A", b"v\x7fw")],
        [(b"X-A", b"ok"), (b"X-B", b"v\r\n\r\nGET /smuggled HTTP/1.1")],
        [(b"X A", b"v")],
        [(b"X-A\r\nX-Smuggled", b"yes")],
        [(b"", b"v")],
        [(b"X:A", b"v")],
    ],
)
def test_bad_names_and_values_are_refused(headers):
    with pytest.raises(RequestHeadError):
        encode_request_head(b"GET", b"/", b"h", headers)


@pytest.mark.parametrize(
    "method, target, host",
    [
        (b"GET", b"/a b", b"h"),
        (b"GET", b"/a\r\nX: y", b"h"),
        (b"GET", b"", b"h"),
        (b"G ET", b"/", b"h"),
        (b"GET", b"/", b"h\r\nX-Smuggled: yes"),
        (b"GET", b"/", b"h\x00"),
    ],
)
def test_bad_request_line_or_host_is_refused(method, target, host):
    with pytest.raises(RequestHeadError):
        encode_request_head(method, target, host, [])


def test_valid_heads_pass_unchanged():
    headers = [
        (b"X-Tab", b"a\tb"),
        (b"X-Latin", b"caf\xe9"),
        (b"!#$%&'*+-.^_`|~09az", b""),
        (b"Cookie", b"a=b; c=d"),
    ]
    raw = encode_request_head(b"POST", b"/p?q=1&r=%20", b"h:80", headers)
    assert raw == (
        b"POST /p?q=1&r=%20 HTTP/1.1\r\nHost: h:80\r\nX-Tab: a\tb\r\n"
        b"X-Latin: caf\xe9\r\n!#$%&'*+-.^_`|~09az: \r\nCookie: a=b; c=d\r\n\r\n"
    )
    assert encode_request_head(b"GET", b"/", b"h", []) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_websocket_over_http_meta_with_crlf_is_refused():
    route, target = _route("* o:80,over_http")
    for meta in ({"User": SMUGGLE}, {"Us\r\ner": "x"}, {"Us er": "x"}, {"Us\u20acr": "x"}):
        with pytest.raises(RequestHeadError):
            build_request(
                route,
                target,
                b"POST",
                b"/ws",
                [(b"Host", b"h")],
                b"",
                sig=None,
                extra=woh_headers("cid", meta),
            )
    ok = build_request(
        route,
        target,
        b"POST",
        b"/ws",
        [(b"Host", b"h")],
        b"",
        sig=None,
        extra=woh_headers("cid", {"User": "alice"}),
    )
    assert b"\r\nMeta-User: alice\r\n" in ok


def test_websocket_handshake_goes_through_the_same_check():
    route, target = _route()
    good = client_handshake(OriginClient(), route, target, b"/ws", [(b"Host", b"h")], b"k==", None)
    assert good.startswith(b"GET /ws HTTP/1.1\r\nHost: h\r\n")
    with pytest.raises(RequestHeadError):
        client_handshake(
            OriginClient(),
            route,
            target,
            b"/ws",
            [(b"Host", b"h"), (b"X-A", b"a\r\nB: c")],
            b"k==",
            None,
        )


def test_route_header_prop_with_a_bad_name_is_refused_at_start():
    with pytest.raises(ConfigError, match="routes line 1"):
        parse_routes(['*,header="X A:v" o:80'])


# -- item 1: interim responses and bytes after a response -------------------------------------


def _feed(*pieces: bytes) -> ResponseHead:
    p = ResponseHead()
    parser = p.parser = httptools.HttpResponseParser(p)
    for piece in pieces:
        try:
            parser.feed_data(piece)
        except httptools.HttpParserError:
            assert p.complete  # only bytes after the final response may fail
    return p


ALICE = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=ALICE\r\nContent-Length: 13\r\n\r\nalice-private"


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 199 Whatever\r\nX-I: 1\r\n\r\n",
    ],
)
def test_interim_responses_are_skipped(interim, split):
    pieces = (interim * 2, ALICE) if split else (interim * 2 + ALICE,)
    p = _feed(pieces[0])
    if split:  # only interim so far: no head, nothing complete, the connection is busy
        assert not p.head_done and not p.complete and p.interim == 2
        p = _feed(*pieces)
    assert p.head_done and p.complete and p.status == 200 and p.reason == b"OK"
    assert p.headers == [(b"Set-Cookie", b"session=ALICE"), (b"Content-Length", b"13")]
    assert b"".join(p.chunks) == b"alice-private" and p.keep and not p.extra


@pytest.mark.parametrize(
    "after",
    [
        b"HTTP/1.1 200 OK\r\nSet-Cookie: session=MALLORY\r\nContent-Length: 3\r\n\r\nbad",
        b"garbage\r\n",
        b"HTTP/1.1 103 Early Hints\r\n\r\n",
    ],
)
def test_bytes_after_the_final_response_are_never_parsed(after):
    p = _feed(ALICE + after)
    assert p.complete and p.extra  # the connection must not be reused
    assert p.headers == [(b"Set-Cookie", b"session=ALICE"), (b"Content-Length", b"13")]
    assert b"".join(p.chunks) == b"alice-private"


# -- item 6: the Host that routes is the Host forwarded; trailers dropped ----------------------


def test_duplicate_host_is_400():
    for data in (
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\nHost: b\r\n\r\n",
    ):
        conn = parse(data)
        assert conn.reject is not None and conn.reject.status == 400, data
        assert conn.queue == []


def test_chunked_trailers_are_dropped():
    conn = parse(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: evil\r\nX-Trailer: 1\r\n\r\n"
    )
    assert conn.reject is None and len(conn.queue) == 1
    req = conn.queue[0]
    assert bytes(req.body) == b"abc" and req.host == b"a"
    assert req.headers == [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]


# -- item 11: no plaintext toward a TLS target ------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "* o:443,ssl",
        "*,proto=ws o:443,ssl",
        "example.com,path_beg=/ws o:80 p:443,ssl",
        "*,proto=http o:443,ssl",
        "* o:80,over_http p:443,ssl",
    ],
)
def test_ssl_targets_parse_for_every_kind_of_route(line):
    # TLS toward origins (issue 14): HTTP, WebSocket-over-HTTP and WebSocket-to-WebSocket all
    # connect with TLS to an ssl target (tests/edge/test_origin_tls.py: never in plaintext)
    assert parse_routes(["other.example other:80", line]).routes[-1].targets[-1].ssl


# -- item 1, WebSocket to WebSocket: a 103 before the 101 -------------------------------------


class _WsApp:
    cfg = Config(origin_timeout_s=5.0)
    proxy_errors = 0

    def __init__(self) -> None:
        self.origin_client = OriginClient()
        self.upstream = Upstream()

    def sign(self, route):
        return None


@pytest.mark.parametrize("interim", [b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"])
def test_websocket_handshake_skips_interim_responses(interim):
    """Real loopback sockets, no sleeps (as tests/edge/test_originpool.py)."""

    async def main():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        route = parse_routes([f"* 127.0.0.1:{port}"]).routes[0]

        async def origin(stream):
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += await stream.receive_some(4096)
            key = next(
                line.split(b": ", 1)[1]
                for line in buf.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            if interim:  # alone first: the edge reads it, then must wait for the 101
                await stream.send_all(interim)
                await trio.testing.wait_all_tasks_blocked(0.05)
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + generate_accept_token(key) + b"\r\n\r\n"
            )
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, origin, listeners)
            side = WsOrigin(_WsApp(), route, [(b"Host", b"h")], b"/ws")
            opened = await side.open()
            assert opened.reject is None, opened.reject
            assert (b"Upgrade", b"websocket") in opened.headers
            await side.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
