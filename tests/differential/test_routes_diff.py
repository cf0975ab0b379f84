"""Differential scenarios for routes and proxy rules (issue 13): auto cross-origin (preflight,
normal and error answers), JSON-P, X-Forwarded-For/-Proto, Pushpin-Route, the test target and
orig_headers: the client sees the same bytes and the origin the same request headers."""

from __future__ import annotations

import pytest

from tests.differential.harness import HttpClient, OriginResponse, same_as_pushpin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PLAIN = OriginResponse(
    200,
    [("Content-Type", "text/plain"), ("X-Mine", "1"), ("Cache-Control", "no-cache")],
    b"hi\n",
)


def _routes(port: int) -> str:
    return (
        f"*,path_beg=/a,aco 127.0.0.1:{port}\n"
        f"*,path_beg=/b,aco,jsonp_mode=basic,jsonp_cb=f 127.0.0.1:{port}\n"
        "*,path_beg=/t/ test\n"
        f"*,id=r2,path_beg=/o,orig_headers 127.0.0.1:{port}\n"
        f"* 127.0.0.1:{port}\n"
    )


PROXY = {"x_forwarded_for": "truncate:1,append", "accept_pushpin_route": "true"}


def _ask(port: int, raw: bytes) -> tuple:
    with HttpClient(port) as c:
        c.send(raw)
        head, body = c.response()
    return head.comparable(), body


def _run(each_system, origin, requests: list[bytes]) -> dict:
    seen = {}
    for system in each_system(routes=_routes(origin.port), proxy=PROXY):
        answers = [_ask(system.client_port, raw) for raw in requests]
        seen[system.name] = (answers, [r.comparable() for r in origin.take()])
    return seen


XFF = ("x-forwarded-for", "127.0.0.1")
CORS_ERR = (
    ("access-control-allow-credentials", "true"),
    ("access-control-allow-methods", "OPTIONS, HEAD, GET, POST, PUT, DELETE"),
    ("access-control-allow-origin", "*"),
    ("access-control-max-age", "3600"),
    ("content-type", "text/plain"),
)


def test_auto_cross_origin_preflight_and_errors(each_system, origin):
    origin.respond("/a", PLAIN)
    seen = _run(
        each_system,
        origin,
        [
            b"OPTIONS /a HTTP/1.1\r\nHost: e\r\nOrigin: http://x.org\r\n"
            b"Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: X-A, x-b\r\n\r\n",
            b"GET /a?callback= HTTP/1.1\r\nHost: e\r\n\r\n",
        ],
    )
    answers, reqs = seen["gripcast"]
    assert answers == [
        (
            (
                200,
                "OK",
                (
                    ("access-control-allow-credentials", "true"),
                    ("access-control-allow-headers", "X-A, x-b"),
                    ("access-control-allow-methods", "PUT"),
                    ("access-control-allow-origin", "http://x.org"),
                    ("access-control-expose-headers", "X-Mine"),
                    ("access-control-max-age", "3600"),
                    ("cache-control", "no-cache"),
                    ("content-type", "text/plain"),
                    ("x-mine", "1"),
                ),
            ),
            b"hi\n",
        ),
        ((400, "Bad Request", CORS_ERR), b"Invalid callback parameter.\n"),
    ]
    assert reqs == [
        (
            "OPTIONS",
            "/a",
            (
                ("access-control-request-headers", "X-A, x-b"),
                ("access-control-request-method", "PUT"),
                ("origin", "http://x.org"),
                XFF,
            ),
            b"",
        )
    ]
    same_as_pushpin(seen)


def test_jsonp_extended_and_basic(each_system, origin):
    origin.respond("/a", PLAIN)
    origin.respond("/b", PLAIN)
    seen = _run(
        each_system,
        origin,
        [
            b"GET /a?callback=cb&x=1 HTTP/1.1\r\nHost: e\r\n\r\n",
            b"GET /a?callback=cb&_method=POST&_headers=%7B%22X-H%22%3A%22v%22%7D&_body=abc "
            b"HTTP/1.1\r\nHost: e\r\n\r\n",
            b"GET /b?f=g HTTP/1.1\r\nHost: e\r\n\r\n",
        ],
    )
    answers, reqs = seen["gripcast"]
    js = (200, "OK", (("cache-control", "no-cache"), ("content-type", "application/javascript")))
    extended = (
        b'/**/cb({"code": 200, "reason": "OK", "headers": {"Cache-Control":"no-cache",'
        b'"Content-Length":"3","Content-Type":"text/plain","X-Mine":"1"}, "body": "hi\\n"});\n'
    )
    assert answers == [(js, extended), (js, extended), (js, b"/**/g(hi);\n")]
    assert reqs == [
        ("GET", "/a?x=1", (XFF,), b""),
        ("POST", "/a", (XFF, ("x-h", "v")), b"abc"),
        ("POST", "/b", (XFF,), b""),
    ]
    same_as_pushpin(seen)


def test_test_target(each_system, origin):
    seen = _run(
        each_system,
        origin,
        [b"GET /t/ HTTP/1.1\r\nHost: e\r\n\r\n", b"GET /t/nope HTTP/1.1\r\nHost: e\r\n\r\n"],
    )
    assert seen["gripcast"] == (
        [
            (
                (200, "OK", (("content-type", "text/plain"),)),
                b"Hello from the Pushpin test handler!\n",
            ),
            ((404, "Not Found", (("content-type", "text/plain"),)), b"no such test resource\n"),
        ],
        [],
    )
    same_as_pushpin(seen)


def test_x_forwarded_pushpin_route_and_orig_headers(each_system, origin):
    origin.respond("/a", PLAIN)
    seen = _run(
        each_system,
        origin,
        [
            # Pushpin-Route picks the orig_headers route (id r2) though the path is /a
            b"GET /a HTTP/1.1\r\nHost: e\r\nX-Forwarded-For: 1.1.1.1\r\n"
            b"X-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nPushpin-Route: r2\r\n\r\n",
        ],
    )
    answers, reqs = seen["gripcast"]
    assert answers[0][0][0] == 200
    assert reqs == [
        (
            "GET",
            "/a",
            (
                ("eb9bf0f5-host", "e"),
                ("eb9bf0f5-pushpin-route", "r2"),
                ("eb9bf0f5-x-forwarded-for", "1.1.1.1"),
                ("eb9bf0f5-x-forwarded-for", "2.2.2.2"),
                ("eb9bf0f5-x-forwarded-proto", "https"),
                # truncate:1 keeps the last client value; append adds the client's address;
                # set_x_forwarded_protocol (proto-only) drops the client's X-Forwarded-Proto
                ("x-forwarded-for", "2.2.2.2, 127.0.0.1"),
            ),
            b"",
        )
    ]
    same_as_pushpin(seen)


def test_x_forwarded_proto_accepted_as_tls(each_system, origin):
    origin.respond("/", PLAIN)
    seen = {}
    proxy = {"accept_x_forwarded_protocol": "true", "set_x_forwarded_protocol": "true"}
    for system in each_system(routes=f"* 127.0.0.1:{origin.port}\n", proxy=proxy):
        _ask(system.client_port, b"GET / HTTP/1.1\r\nHost: e\r\nX-Forwarded-Proto: https\r\n\r\n")
        _ask(system.client_port, b"GET / HTTP/1.1\r\nHost: e\r\nX-Forwarded-Proto: http\r\n\r\n")
        seen[system.name] = [r.comparable() for r in origin.take()]
    assert seen["gripcast"] == [
        (
            "GET",
            "/",
            (("x-forwarded-proto", "https"), ("x-forwarded-protocol", "https")),
            b"",
        ),
        ("GET", "/", (), b""),
    ]
    same_as_pushpin(seen)
