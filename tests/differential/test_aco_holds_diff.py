"""Auto cross-origin on GRIP holds (issue 13), as Pushpin's handler applies it: a JSON-P
long-poll's answer (published or timeout) is wrapped (extended and basic mode), a plain
long-poll's answer gets CORS headers computed from its final headers (so
``Access-Control-Expose-Headers`` names what a published ``http-response`` added), and a
stream's head gets CORS headers and no JSON-P."""

from __future__ import annotations

import pytest

from tests.differential.harness import HttpClient, OriginResponse, same_as_pushpin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _routes(port: int) -> str:
    return f"*,path_beg=/b,aco,jsonp_mode=basic 127.0.0.1:{port}\n*,aco 127.0.0.1:{port}\n"


def _poll(ch: str, timeout: str = "20") -> OriginResponse:
    return OriginResponse(
        200,
        [
            ("Content-Type", "text/plain"),
            ("X-Mine", "1"),
            ("x-mine", "2"),
            ("Grip-Hold", "response"),
            ("Grip-Channel", ch),
            ("Grip-Timeout", timeout),
        ],
        b"timeout body\n",
    )


def _answered(system, c: HttpClient, ch: str, fmt: dict) -> tuple:
    """Publish ``fmt`` until the held poll answers (a publish before the poll is subscribed
    is lost: each try is the readiness probe)."""
    for _ in range(50):
        system.publish(ch, {"http-response": fmt})
        try:
            head, body = c.response(timeout=0.2)
        except (TimeoutError, OSError):
            continue
        return head.comparable(drop=["date"]), body
    raise TimeoutError(f"{system.name}: the poll on {ch} was never answered")


PUB = {
    "code": 201,
    "reason": "Made",
    "headers": {"X-Pub": "p", "Content-Type": "text/x"},
    "body": 'pub "q"\n',
}


def test_jsonp_long_poll_published_and_timeout(each_system, origin, uniq):
    ch, ch_t = uniq("jp"), uniq("jpt")
    origin.respond("/p", _poll(ch))
    origin.respond("/t", _poll(ch_t, "1"))
    origin.respond("/b", _poll(ch))
    seen = {}
    for system in each_system(routes=_routes(origin.port)):
        out = []
        with HttpClient(system.client_port) as c:
            c.send(b"GET /p?callback=cb HTTP/1.1\r\nHost: e\r\nOrigin: http://o\r\n\r\n")
            origin.wait_requests(1)
            out.append(_answered(system, c, ch, PUB))
        with HttpClient(system.client_port) as c:  # basic mode: the body, newline dropped
            c.send(b"GET /b?callback=f HTTP/1.1\r\nHost: e\r\n\r\n")
            origin.wait_requests(2)
            out.append(_answered(system, c, ch, {"body": "[1, 2]\n"}))
        with HttpClient(system.client_port) as c:
            c.send(b"GET /t?callback=cb HTTP/1.1\r\nHost: e\r\n\r\n")
            head, body = c.response(timeout=10)
            out.append((head.comparable(drop=["date"]), body))
        # the paths the origin saw (a poll on a channel's first subscription is asked again
        # about a second later, as JSON-P made it: Pushpin's update; once or not, by timing)
        seen[system.name] = (out, sorted({r.path for r in origin.take()}))
    js = ("content-type", "application/javascript")
    assert seen["gripcast"] == (
        [
            (
                (200, "OK", (js, ("x-mine", "1"), ("x-mine", "2"), ("x-pub", "p"))),
                b'/**/cb({"body":"pub \\"q\\"\\n","code":201,"headers":{"Content-Type":"text/x",'
                b'"X-Mine":"1, 2","X-Pub":"p"},"reason":"Made"});\n',
            ),
            (
                (200, "OK", (js, ("x-mine", "1"), ("x-mine", "2"))),
                b"/**/f([1, 2]);\n",
            ),
            (
                (200, "OK", (js, ("x-mine", "1"), ("x-mine", "2"))),
                b'/**/cb({"body":"timeout body\\n","code":200,"headers":{"Content-Type":'
                b'"text/plain","X-Mine":"1, 2"},"reason":"OK"});\n',
            ),
        ],
        ["/b", "/p", "/t"],
    )
    same_as_pushpin(seen)


CORS = (
    ("access-control-allow-credentials", "true"),
    ("access-control-allow-methods", "OPTIONS, HEAD, GET, POST, PUT, DELETE"),
)


def test_cors_on_long_poll_exposes_published_headers(each_system, origin, uniq):
    ch = uniq("cp")
    origin.respond("/p", _poll(ch))
    origin.respond("/t", _poll(uniq("ct"), "1"))
    seen = {}
    for system in each_system(routes=_routes(origin.port)):
        out = []
        with HttpClient(system.client_port) as c:
            c.send(b"GET /p HTTP/1.1\r\nHost: e\r\nOrigin: http://o\r\n\r\n")
            origin.wait_requests(1)
            out.append(_answered(system, c, ch, {"headers": {"X-Pub": "p"}, "body": "pub\n"}))
        with HttpClient(system.client_port) as c:
            c.send(b"GET /t HTTP/1.1\r\nHost: e\r\n\r\n")
            head, body = c.response(timeout=10)
            out.append((head.comparable(drop=["date"]), body))
        seen[system.name] = out
    assert seen["gripcast"] == [
        (
            (
                200,
                "OK",
                (
                    *CORS,
                    ("access-control-allow-origin", "http://o"),
                    ("access-control-expose-headers", "X-Mine, X-Pub"),
                    ("access-control-max-age", "3600"),
                    ("content-type", "text/plain"),
                    ("x-mine", "1"),
                    ("x-mine", "2"),
                    ("x-pub", "p"),
                ),
            ),
            b"pub\n",
        ),
        (
            (
                200,
                "OK",
                (
                    *CORS,
                    ("access-control-allow-origin", "*"),
                    ("access-control-expose-headers", "X-Mine"),
                    ("access-control-max-age", "3600"),
                    ("content-type", "text/plain"),
                    ("x-mine", "1"),
                    ("x-mine", "2"),
                ),
            ),
            b"timeout body\n",
        ),
    ]
    same_as_pushpin(seen)


def test_jsonp_stream_head_gets_cors_not_jsonp(each_system, origin, uniq):
    ch = uniq("js")
    origin.respond(
        "/s",
        OriginResponse(
            200,
            [("Content-Type", "text/plain"), ("Grip-Hold", "stream"), ("Grip-Channel", ch)],
            b"start\n",
        ),
    )
    seen = {}
    for system in each_system(routes=_routes(origin.port)):
        with HttpClient(system.client_port) as c:
            c.send(b"GET /s?callback=cb HTTP/1.1\r\nHost: e\r\n\r\n")
            c.read_until(b"start\n")
            system.publish(ch, {"http-stream": {"content": "more\n"}})
            head, body = c.response(until=b"more\n")
        seen[system.name] = (head.comparable(drop=["date"]), body, origin.take()[0].path)
    assert seen["gripcast"] == (
        (
            200,
            "OK",
            (
                *CORS,
                ("access-control-allow-origin", "*"),
                ("access-control-max-age", "3600"),
                ("content-type", "text/plain"),
            ),
        ),
        b"start\nmore\n",
        "/s",
    )
    same_as_pushpin(seen)
