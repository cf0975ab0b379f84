"""``_speedups`` headers twins: the per-header loops of a proxied request (proxy rules' scan,
the headers an origin gets, the request head's bytes) give the same answers compiled and pure,
on the edge's ``(bytes, bytes)`` tuples and on anything else (the compiled twin hands that to
the pure one)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import _speedups
from edge.origin.client import DROP_HEADERS
from edge.proxyrules import _RULED, ORIG_PREFIX
from tests.helpers import skip_missing

PURE = _speedups.twin("headers", compiled=False)


def _compiled():
    try:
        return _speedups.twin("headers", compiled=True)
    except ImportError:
        skip_missing("the compiled twins are not built (pip install . builds them)")


@pytest.fixture(params=["pure", "compiled"])
def twin(request):
    return PURE if request.param == "pure" else _compiled()


BROWSERISH = [
    (b"Host", b"example.com"),
    (b"Connection", b"keep-alive"),
    (b"Accept", b"text/event-stream"),
    (b"grip-sig", b"forged"),
    (b"Grip-Last", b"c; last-id=1"),
    (b"Accept-Encoding", b"gzip"),
    (b"HOST", b"second.example"),
    (b"Cookie", b"a=b"),
]


def test_forward_filter_keeps_order_drops_hop_by_hop_and_grip(twin):
    host, out = twin.forward_filter(BROWSERISH, DROP_HEADERS, False)
    assert host == b"second.example"  # the last Host (the request parser refuses two)
    assert out == [(b"Accept", b"text/event-stream"), (b"Cookie", b"a=b")]
    _, kept = twin.forward_filter(BROWSERISH, DROP_HEADERS, True)  # a trusted proxy in front
    assert [k for k, _ in kept] == [b"Accept", b"grip-sig", b"Grip-Last", b"Cookie"]


def test_rules_clean(twin):
    assert twin.rules_clean([(b"Accept", b"x"), (b"Cookie", b"y")], _RULED, ORIG_PREFIX)
    assert not twin.rules_clean(
        [(b"Accept", b"x"), (b"X-Forwarded-For", b"1")], _RULED, ORIG_PREFIX
    )
    assert not twin.rules_clean([(b"EB9BF0F5-Host", b"x")], _RULED, ORIG_PREFIX)
    assert twin.rules_clean([], _RULED, ORIG_PREFIX)


def test_head_join_and_unseen_names(twin):
    hs = [(b"Accept", b"*/*"), (b"X-A", b"1")]
    head = twin.head_join(b"GET", b"/p?q", b"h:1", hs, {b"Accept", b"X-A"})
    assert head == b"GET /p?q HTTP/1.1\r\nHost: h:1\r\nAccept: */*\r\nX-A: 1\r\n\r\n"
    assert twin.head_join(b"GET", b"/p?q", b"h:1", hs, {b"Accept"}) is None  # X-A unseen
    assert twin.head_join(b"GET", b"/p?q", b"h:1", hs, None) == head
    assert twin.head_join(b"GET", b"/", b"h", [], set()) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_other_item_shapes_give_the_pure_answers():
    c = _compiled()
    odd = [[b"Host", b"h"], (b"Accept", bytearray(b"x")), (b"Cookie", b"c")]
    assert c.forward_filter(odd, DROP_HEADERS, False) == PURE.forward_filter(
        odd, DROP_HEADERS, False
    )
    assert c.rules_clean(iter(odd), _RULED, ORIG_PREFIX) == PURE.rules_clean(
        odd, _RULED, ORIG_PREFIX
    )
    pairs = [(b"A", b"1"), [b"B", b"2"]]
    assert c.head_join(b"GET", b"/", b"h", pairs, None) == PURE.head_join(
        b"GET", b"/", b"h", pairs, None
    )
    with pytest.raises(TypeError):  # (a str name: both refuse it alike)
        c.head_join(b"GET", b"/", b"h", [("A", b"1")], None)
    with pytest.raises(TypeError):
        PURE.head_join(b"GET", b"/", b"h", [("A", b"1")], None)


names = st.one_of(
    st.sampled_from(
        [
            b"Host", b"HOST", b"host", b"Connection", b"Keep-Alive", b"Accept-Encoding",
            b"Content-Length", b"TE", b"Upgrade", b"Grip-Sig", b"grip-last", b"GRIP-X",
            b"X-Forwarded-For", b"x-forwarded-proto", b"Pushpin-Route", b"CDN-Loop",
            b"eb9bf0f5-Cookie", b"EB9BF0F5-x", b"Accept", b"Cookie", b"User-Agent", b"gri",
            b"Expect", b"Transfer-Encoding", b"content-LENGTH", b"Grip-Hold", b"grip-link",
            b"Content-Type",
        ]
    ),
    st.binary(min_size=0, max_size=12),
)  # fmt: skip
values = st.one_of(
    st.binary(max_size=20),
    st.sampled_from(
        [
            b"100-continue",
            b" 100-CONTINUE ",
            b"7",
            b"stream",
            b"</n>; rel=next",
            b"application/grip-instruct; x",
        ]
    ),
)
headers = st.lists(st.tuples(names, values), max_size=12)


@given(headers, st.booleans(), st.sets(names, max_size=8), st.booleans())
def test_twins_agree(hs, keep_grip, tokens, no_tokens):
    c = _compiled()
    assert c.forward_filter(hs, DROP_HEADERS, keep_grip) == PURE.forward_filter(
        hs, DROP_HEADERS, keep_grip
    )
    assert c.rules_clean(hs, _RULED, ORIG_PREFIX) == PURE.rules_clean(hs, _RULED, ORIG_PREFIX)
    seen = None if no_tokens else tokens
    assert c.head_join(b"GET", b"/x", b"h", hs, seen) == PURE.head_join(
        b"GET", b"/x", b"h", hs, seen
    )


def test_request_facts(twin):
    hs = [
        (b"HOST", b"a.example"),
        (b"Content-Length", b" 5 "),
        (b"content-length", b"5"),
        (b"Expect", b" 100-Continue "),
        (b"Host", b"b.example"),
    ]
    assert twin.request_facts(hs) == ({b"5"}, False, b"a.example", 2, True)
    assert twin.request_facts([(b"Transfer-Encoding", b"chunked")]) == (set(), True, None, 0, False)
    assert twin.request_facts([(b"Expect", b"nothing")]) == (set(), False, None, 0, False)


@given(headers)
def test_twins_agree_on_request_facts(hs):
    assert _compiled().request_facts(hs) == PURE.request_facts(hs)


@given(headers)
def test_twins_agree_on_grip_facts(hs):
    assert _compiled().grip_facts(hs) == PURE.grip_facts(hs)


@pytest.mark.parametrize(
    "method, target, host, hs",
    [
        (b"GET", b"", b"h", []),  # no target
        (b"GET", b"/a b", b"h", []),
        (b"GET", b"/a\tb", b"h", []),
        (b"GET", b"/a\r\nX: y", b"h", []),
        (b"GET", b"/", b"h\r\nX-Injected: 1", []),
        (b"GET", b"/", b"h", [(b"X", b"v\nInjected: 1")]),
        (b"GET", b"/", b"h", [(b"X", b"v\rInjected: 1")]),
        (b"GET", b"/", b"h", [(b"X", b"nul\x00")]),
        (b"GET", b"/", b"h", [(b"X", b"del\x7f")]),
        (b"GET", b"/", b"h", [(b"X\x01", b"v")]),
        (b"G\x00T", b"/", b"h", []),
    ],
)
def test_head_join_refuses_an_unsound_head(twin, method, target, host, hs):
    assert twin.head_join(method, target, host, hs, None) is None


def test_head_join_lets_htab_through_in_values(twin):
    head = twin.head_join(b"GET", b"/", b"h", [(b"X", b"a\tb")], None)
    assert head == b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\r\n\r\n"


@given(
    st.binary(max_size=6),
    st.binary(max_size=10),
    st.binary(max_size=10),
    st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=10)), max_size=4),
)
def test_twins_agree_on_any_head(method, target, host, hs):
    assert _compiled().head_join(method, target, host, hs, None) == PURE.head_join(
        method, target, host, hs, None
    )


def test_any_container_of_names(twin):
    hs = [(b"Connection", b"x"), (b"Accept", b"y")]
    assert twin.forward_filter(hs, {b"connection"}, False) == (b"", [(b"Accept", b"y")])
    assert not twin.rules_clean(hs, [b"accept"], b"eb9bf0f5-")
