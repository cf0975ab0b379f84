"""Pushpin's [proxy] request rules, CORS, JSON-P, the test target, the routes watch and the
access-log line (sans-IO parts)."""

from __future__ import annotations

import logging

import pytest

from broker.config import Config
from edge import jsonp
from edge.accesslog import format_line, route_level
from edge.cors import cors_headers
from edge.proxyrules import (
    ProxyRules,
    apply,
    claims_tls,
    denied_destination,
    logical_peer,
    pick_route,
)
from edge.routes import Jsonp, parse_routes
from edge.routeswatch import Stamp, Watch
from edge.testorigin import respond

ROUTE = parse_routes(["* h:1"]).routes[0]


def rules(**kw) -> ProxyRules:
    return ProxyRules.from_config(Config(**kw))


def test_xff_default_passes_through_moved_to_the_end():
    out = apply(
        rules(),
        ROUTE,
        [(b"X-Forwarded-For", b"1.1.1.1"), (b"A", b"b")],
        tls=False,
        ws=False,
        peer="9.9.9.9",
    )
    assert out == [(b"A", b"b"), (b"X-Forwarded-For", b"1.1.1.1")]


@pytest.mark.parametrize(
    "rule, expected",
    [
        (("truncate:0", "append"), b"9.9.9.9"),
        (("truncate:1",), b"2.2.2.2"),
        (("append",), b"1.1.1.1, 2.2.2.2, 9.9.9.9"),
    ],
)
def test_xff_rules(rule, expected):
    hs = [(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")]
    out = apply(rules(x_forwarded_for=rule), ROUTE, hs, tls=False, ws=False, peer="9.9.9.9")
    assert out == [(b"X-Forwarded-For", expected)]


def test_x_forwarded_proto_modes():
    hs = [(b"X-Forwarded-Proto", b"https")]
    assert apply(rules(), ROUTE, hs, tls=False, ws=False, peer="") == []
    assert (
        apply(rules(set_x_forwarded_protocol="false"), ROUTE, hs, tls=False, ws=False, peer="")
        == hs
    )
    r = rules(set_x_forwarded_protocol="true", accept_x_forwarded_protocol=True)
    assert claims_tls(r, hs) and not claims_tls(rules(), hs)
    assert apply(r, ROUTE, hs, tls=True, ws=True, peer="") == [
        (b"X-Forwarded-Proto", b"wss"),
        (b"X-Forwarded-Protocol", b"wss"),
    ]


def test_orig_headers_need_mark_cdn_loop_and_pushpin_route():
    route = parse_routes(["*,orig_headers,header=X-R:1 h:1"]).routes[0]
    r = rules(orig_headers_need_mark=("Cookie",), cdn_loop="gc", accept_pushpin_route=True)
    hs = [
        (b"Cookie", b"c"),
        (b"eb9bf0f5-Cookie", b"m"),
        (b"Pushpin-Route", b"x"),
        (b"CDN-Loop", b"a"),
    ]
    assert apply(r, route, hs, tls=False, ws=False, peer="") == [
        (b"Cookie", b"c"),
        (b"X-R", b"1"),
        (b"eb9bf0f5-Cookie", b"m"),
        (b"eb9bf0f5-Pushpin-Route", b"x"),
        (b"eb9bf0f5-CDN-Loop", b"a"),
        (b"eb9bf0f5-X-R", b"1"),
        (b"CDN-Loop", b"a, gc"),
    ]
    # a route without orig_headers drops marked headers a client sent
    assert apply(r, ROUTE, [(b"eb9bf0f5-A", b"1")], tls=False, ws=False, peer="") == [
        (b"CDN-Loop", b"gc")
    ]


def test_pick_route_by_pushpin_route_only_when_accepted():
    t = parse_routes(["*,id=x,path_beg=/x h:1", "* h:2"])
    hs = [(b"Pushpin-Route", b"x")]
    assert pick_route(t, rules(), "h", "/", hs, ws=False, tls=False) is t.routes[1]
    r = rules(accept_pushpin_route=True)
    assert pick_route(t, r, "h", "/", hs, ws=False, tls=False) is t.routes[0]
    assert (
        pick_route(t, r, "h", "/", [(b"Pushpin-Route", b"nope")], ws=False, tls=False)
        is t.routes[1]
    )


def test_logical_peer_and_untrusted_deny_list():
    hs = [(b"X-Forwarded-For", b"5.5.5.5")]
    assert logical_peer(rules(), hs, "1.2.3.4") == "5.5.5.5"
    assert logical_peer(rules(x_forwarded_for=("truncate:0",)), hs, "1.2.3.4") == "1.2.3.4"
    assert denied_destination("127.0.0.1") and denied_destination("printer.local")
    assert denied_destination("origin", ["10.1.2.3"]) and not denied_destination(
        "origin", ["8.8.8.8"]
    )


def test_cors_only_adds_what_is_missing():
    req = [(b"Origin", b"http://o")]
    resp = [
        (b"Content-Type", b"t"),
        (b"X-A", b"1"),
        (b"Grip-X", b"2"),
        (b"Access-Control-Max-Age", b"5"),
    ]
    assert cors_headers(req, resp) == [
        (b"Access-Control-Allow-Methods", b"OPTIONS, HEAD, GET, POST, PUT, DELETE"),
        (b"Access-Control-Expose-Headers", b"X-A"),
        (b"Access-Control-Allow-Credentials", b"true"),
        (b"Access-Control-Allow-Origin", b"http://o"),
    ]


def test_jsonp_request_and_wrap():
    cfg = Jsonp(body_param="data", default_callback="d")
    assert jsonp.parse_request(cfg, b"POST", b"/?callback=x", []) is None
    assert jsonp.parse_request(cfg, b"GET", b"/?y=1", []) is None
    j = jsonp.parse_request(
        cfg, b"GET", b"/p?data=%7B%7D&z=2", [(b"Host", b"h"), (b"Accept", b"x")]
    )
    assert j is not None
    assert (j.method, j.target, j.body, j.callback) == (b"GET", b"/p?z=2", b"{}", b"d")
    assert j.headers == [
        (b"Content-Type", b"application/json"),
        (b"Host", b"h"),
        (b"Accept", b"*/*"),
    ]
    for bad, msg in [
        (b"/?callback=%zz", "Invalid callback parameter."),
        (b"/?callback=c&_method=", "Invalid _method parameter."),
        (b"/?callback=c&_headers=%5B%5D", "Invalid _headers parameter."),
    ]:
        with pytest.raises(jsonp.JsonpError, match=msg.replace(".", r"\.")):
            jsonp.parse_request(cfg, b"GET", bad, [])
    basic = jsonp.parse_request(Jsonp(extended=False), b"GET", b"/?callback=c", [])
    assert basic is not None
    hs, body = jsonp.wrap(basic, 404, b"Not Found", [(b"Cache-Control", b"x")], b"[1]\r\n")
    assert body == b"/**/c([1]);\n"
    assert hs == [
        (b"Content-Type", b"application/javascript"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"x"),
    ]


def test_test_origin_answers():
    assert respond(b"/", 0) == (
        200,
        [("Content-Type", "text/plain")],
        b"Hello from the Pushpin test handler!\n",
    )
    status, headers, body = respond(b"/stream/?channel=a&channel=b&channel=a", 0)
    assert (status, body) == (200, b"[stream opened]\n")
    assert ("Grip-Hold", "stream") in headers and ("Grip-Channel", "a, b") in headers
    assert ("Grip-Channel", "test") in respond(b"/response", 0)[1]
    assert respond(b"/x", 0)[0] == 404 and respond(b"/", 100_001)[0] == 400


def test_routes_watch_waits_for_the_file_to_hold_still():
    a, b, c = Stamp(1, 1, 1), Stamp(2, 1, 5), Stamp(3, 1, 9)
    w = Watch(a)
    assert [w.poll(a), w.poll(b), w.poll(c), w.poll(c), w.poll(c)] == [
        False,
        False,
        False,
        True,
        False,
    ]
    assert [w.poll(None), w.poll(None)] == [False, True]  # removed: reload reports the error


def test_access_line_and_route_level():
    route = parse_routes(["*,id=api,log_level=3 h:1"]).routes[0]
    line = format_line(
        b"GET", b"/x", route, 200, 12, 0.0042, "stream", from_addr="1.2.3.4", user_agent="ua 1"
    )
    assert (
        line
        == 'GET /x route=api status=200 bytes=12 duration_ms=4.2 mode=stream from=1.2.3.4 ua="ua 1"'
    )
    assert route_level(route) == logging.DEBUG and route_level(None) == logging.INFO
