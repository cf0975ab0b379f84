"""Every request head the edge writes toward an origin, from any header source, is one request
of valid tokens and field values, or is refused (security issue 11, item 4).

Sources fuzzed together: the client's headers, method and target (what a client could put
past llhttp, and worse), ``Grip-Last`` from published ids and channel names, ``Meta-*`` from
the origin or control messages (WebSocket-over-HTTP), route ``header=``/``as_host``/target
``host=`` props, and the WebSocket-to-WebSocket handshake.
"""

from __future__ import annotations

import re

import httptools
from hypothesis import example, given
from hypothesis import strategies as st

from broker.errors import ConfigError
from edge.grip.holds import grip_last
from edge.origin.client import OriginClient, RequestHeadError
from edge.routes import parse_routes
from edge.ws.over_http import woh_headers
from edge.ws.proxy import client_handshake
from tests.fuzz.strategies import FUZZ, nasty_text, token

CLIENT = OriginClient()  # one per test module, as one per edge: its name memo stays warm

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")  # VCHAR, obs-text, SP, HTAB
TARGET = re.compile(rb"[^\x00-\x20\x7f]+")

raw_bytes = st.one_of(
    st.binary(max_size=20),
    st.sampled_from(
        [
            b"\r\n",
            b"\n",
            b"\r",
            b"\x00",
            b"\r\nX-Smuggled: yes",
            b"\r\n\r\nGET / HTTP/1.1",
            b" ",
            b"\t",
            b":",
            b"\xff",
            b"\x7f",
        ]
    ),
    token.map(str.encode),
)
nasty_bytes = st.lists(raw_bytes, max_size=4).map(b"".join)
client_headers = st.lists(
    st.tuples(st.one_of(token.map(str.encode), nasty_bytes), nasty_bytes), max_size=6
)
route_line = st.tuples(
    st.lists(st.one_of(token, nasty_text), max_size=2),  # header= props
    st.one_of(st.none(), nasty_text),  # as_host
    st.one_of(st.none(), nasty_text),  # target host=
).map(
    lambda t: (
        "*"
        + "".join(f',"header={h}:{v}"' for h, v in zip(t[0], t[0][::-1]))
        + (f',"as_host={t[1]}"' if t[1] is not None else "")
        + " o:80"
        + (f',"host={t[2]}"' if t[2] is not None else "")
    )
)


def check_head(raw: bytes, body: bytes = b"") -> None:
    """``raw`` is exactly one request: a clean request line, token names, field values."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep and rest == body, raw
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    assert TOKEN.fullmatch(method) and TARGET.fullmatch(target) and version == b"HTTP/1.1"
    sent = []
    for line in lines[1:]:
        name, colon, value = line.partition(b": ")
        assert colon and TOKEN.fullmatch(name), line
        assert FIELD_VALUE.fullmatch(value), line
        sent.append((name, value.lstrip(b" \t")))  # llhttp drops leading OWS only

    class Seen:
        def __init__(self):
            self.headers, self.messages = [], 0

        def on_header(self, k, v):
            self.headers.append((k, v))

        def on_message_complete(self):
            self.messages += 1

    seen = Seen()
    try:
        httptools.HttpRequestParser(seen).feed_data(raw)
    except httptools.HttpParserUpgrade as exc:  # a WebSocket handshake: nothing after it
        assert exc.args[0] == len(raw)
    except httptools.HttpParserInvalidMethodError:
        # llhttp knows only registered methods; a token it does not know (``*``) is still a
        # valid head (and never reaches an origin from a client: the edge's own parser is llhttp)
        assert TOKEN.fullmatch(method)
        return
    assert seen.messages == 1 and seen.headers == sent  # what we meant is what a parser reads


@st.composite
def request(draw):
    return dict(
        line=draw(route_line),
        method=draw(st.one_of(st.sampled_from([b"GET", b"POST", b"HEAD"]), nasty_bytes)),
        path=draw(
            st.one_of(st.sampled_from([b"/", b"/a?b=c"]), nasty_bytes.map(lambda b: b"/" + b))
        ),
        headers=draw(client_headers),
        channels=draw(st.lists(st.one_of(token, nasty_text), max_size=3)),
        ids=draw(st.lists(st.one_of(token, nasty_text), max_size=3)),
        meta=draw(st.dictionaries(st.one_of(token, nasty_text), nasty_text, max_size=3)),
        body=draw(st.sampled_from([b"", b"x=1"])),
    )


def _route(line: str):
    try:
        route = parse_routes([line]).routes[0]
    except ConfigError:
        return None
    return route


@FUZZ
@given(request())
@example(  # found by this test: an HTAB in the target passed the head's CTL test
    dict(
        line="* o:80",
        method=b"GET",
        path=b"/\t",
        headers=[],
        channels=[],
        ids=[],
        meta={},
        body=b"",
    )
)
def test_every_origin_request_head_is_valid_or_refused(r):
    route = _route(r["line"])
    if route is None:
        return  # a bad route line is refused at start
    target = route.targets[0]
    extra = grip_last(r["channels"], "", dict(zip(r["channels"], r["ids"])))
    extra += woh_headers("cid", r["meta"])
    try:
        raw = CLIENT.build_request(
            route, target, r["method"], r["path"], r["headers"], r["body"], sig="a.b.c", extra=extra
        )
    except RequestHeadError:
        pass
    else:
        body = r["body"]
        check_head(raw, body)
    try:
        raw = client_handshake(
            CLIENT, route, target, r["path"], r["headers"], b"dGhlIHNhbXBsZQ==", "a.b.c"
        )
    except RequestHeadError:
        return
    check_head(raw)


@FUZZ
@given(st.lists(st.one_of(token, nasty_text), min_size=1, max_size=3), nasty_text)
def test_grip_last_with_any_published_id_never_adds_a_header(channels, last_id):
    route = parse_routes(["* o:80"]).routes[0]
    extra = grip_last(channels, "", {c: last_id for c in channels})
    try:
        raw = CLIENT.build_request(
            route, route.targets[0], b"GET", b"/next", [(b"Host", b"h")], b"", sig=None, extra=extra
        )
    except RequestHeadError:
        assert any(c in last_id + "".join(channels) for c in "\r\n\x00") or any(
            ord(c) < 32 and c != "\t" or ord(c) == 127 for c in last_id + "".join(channels)
        )
        return
    check_head(raw)
    names = [line.split(b":")[0] for line in raw.split(b"\r\n")[1:] if line]
    assert names.count(b"Grip-Last") == len(channels)
    assert set(names) == {b"Host", b"Grip-Last", b"Grip-Feature"}
