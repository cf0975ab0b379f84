"""Auto cross-origin on GRIP answers (edge.grip.aco): JSON-P and CORS on a response hold's
answer, CORS on heads; the expected bytes are Pushpin 1.36's (tests/differential/
test_aco_holds_diff.py checks them against Pushpin)."""

from __future__ import annotations

from edge.grip.aco import finish_held, split_full, with_cors
from edge.http1 import responses
from edge.jsonp import JsonpRequest


def _jsonp(extended: bool = True) -> JsonpRequest:
    return JsonpRequest(b"GET", b"/p", [], b"", b"cb", extended)


HEADERS = [("Content-Type", "text/plain"), ("X-Mine", "1"), ("x-mine", "2"), ("X-Pub", "p")]


def test_split_full_round_trip():
    data = responses.full(201, "Made", HEADERS, b"body\n", keep_alive=False)
    code, reason, headers, body, keep = split_full(data)
    assert (code, reason, body, keep) == (201, b"Made", b"body\n", False)
    assert headers == [(k.encode(), v.encode()) for k, v in HEADERS]


def test_jsonp_extended():
    data = responses.full(201, "Made", HEADERS, b'pub "q"\n\x01')
    out = finish_held(data, [], _jsonp())
    body = (
        b'/**/cb({"body":"pub \\"q\\"\\n\\u0001","code":201,"headers":{"Content-Type":'
        b'"text/plain","X-Mine":"1, 2","X-Pub":"p"},"reason":"Made"});\n'
    )
    assert out == responses.full(
        200,
        "OK",
        [(b"X-Mine", b"1"), (b"x-mine", b"2"), (b"X-Pub", b"p")]
        + [(b"Content-Type", b"application/javascript")],
        body,
    )


def test_jsonp_basic_drops_one_trailing_newline_and_keeps_connection_close():
    for tail in (b"\n", b"\r\n"):
        data = responses.full(200, "OK", [], b"[1]" + tail, keep_alive=False)
        out = finish_held(data, [], _jsonp(extended=False))
        assert out.endswith(b"Connection: close\r\n\r\n/**/cb([1]);\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\n")


def test_cors_from_final_headers():
    data = responses.full(200, "OK", HEADERS, b"pub\n")
    out = finish_held(data, [(b"Origin", b"http://o")], None)
    head = out.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[1:] == [
        b"Content-Type: text/plain",
        b"X-Mine: 1",
        b"x-mine: 2",
        b"X-Pub: p",
        b"Access-Control-Allow-Methods: OPTIONS, HEAD, GET, POST, PUT, DELETE",
        b"Access-Control-Expose-Headers: X-Mine, X-Pub",
        b"Access-Control-Allow-Credentials: true",
        b"Access-Control-Allow-Origin: http://o",
        b"Access-Control-Max-Age: 3600",
        b"Content-Length: 4",
    ]


def test_cors_keeps_what_the_answer_set():
    hs = [("Access-Control-Allow-Origin", "https://mine")]
    out = finish_held(responses.full(200, "OK", hs, b""), [(b"Origin", b"http://o")], None)
    assert out.count(b"Access-Control-Allow-Origin") == 1
    assert b"Access-Control-Allow-Origin: https://mine\r\n" in out


def test_with_cors_on_hold_headers():
    got = with_cors((("Content-Type", "text/plain"), ("X-A", "1")), [])
    assert got[:2] == (("Content-Type", "text/plain"), ("X-A", "1"))
    assert ("Access-Control-Expose-Headers", "X-A") in got
    assert ("Access-Control-Allow-Origin", "*") in got
