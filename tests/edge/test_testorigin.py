"""The ``test`` target's sans-IO parts (edge.testorigin): HTTP answers and the WebSocket echo."""

from __future__ import annotations

import json

from wsproto.utilities import generate_accept_token

from _speedups import ws_frame
from edge import testorigin
from edge.ws.connection import WsConnection

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def _client(op: int, payload: bytes) -> bytes:
    return ws_frame(op, payload, True, b"\x01\x02\x03\x04")


def _frames(data: bytes) -> list:
    return WsConnection(client=True).receive_data(data)


def test_http_answers():
    assert testorigin.respond(b"/", 0)[2] == b"Hello from the Pushpin test handler!\n"
    code, headers, _ = testorigin.respond(b"/stream/?channel=a&channel=b&channel=a", 0)
    assert code == 200 and ("Grip-Channel", "a, b") in headers
    assert testorigin.respond(b"/x", 0)[:1] == (404,)
    assert testorigin.respond(b"/", 100_001)[0] == 400


def test_ws_accept_only_on_ws_path():
    assert testorigin.ws_accept(b"/nope", [(b"Sec-WebSocket-Key", KEY)]) is None
    head, first, grip = testorigin.ws_accept(b"/ws/", [(b"Sec-WebSocket-Key", KEY)])
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: " + generate_accept_token(KEY) + b"\r\n" in head
    assert b"Sec-WebSocket-Extensions" not in head
    assert (first, grip) == ([], False)


def test_ws_accept_with_grip_subscribes_each_channel_once():
    hs = [(b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Extensions", b"x, grip; a=b")]
    head, first, grip = testorigin.ws_accept(b"/ws?channel=a&channel=b&channel=a", hs)
    assert grip and b"Sec-WebSocket-Extensions: grip\r\n" in head
    assert [m[:2] for m in first] == [b"c:", b"c:"]
    assert [json.loads(m[2:]) for m in first] == [
        {"type": "subscribe", "channel": "a"},
        {"type": "subscribe", "channel": "b"},
    ]
    _, first, _ = testorigin.ws_accept(b"/ws", hs)
    assert [json.loads(m[2:])["channel"] for m in first] == ["test"]


def test_ws_echo_prefix_ping_and_close():
    ws = WsConnection(client=False)
    out, done = testorigin.ws_answer(ws, _client(1, b"hi") + _client(2, b"\x00"), grip=True)
    assert not done
    assert [(e.binary, e.data) for e in _frames(out)] == [(False, b"m:hi"), (True, b"m:\x00")]
    out, done = testorigin.ws_answer(WsConnection(client=False), _client(1, b"hi"), grip=False)
    assert [e.data for e in _frames(out)] == [b"hi"]
    out, _ = testorigin.ws_answer(ws, _client(9, b"p"), grip=True)
    assert [type(e).__name__ for e in _frames(out)] == ["Pong"]
    out, done = testorigin.ws_answer(ws, _client(8, (4001).to_bytes(2, "big") + b"bye"), True)
    assert done
    (close,) = _frames(out)
    assert (close.code, close.reason) == (4001, "bye")


def test_ws_protocol_error_closes():
    ws = WsConnection(client=False)
    out, done = testorigin.ws_answer(ws, ws_frame(1, b"unmasked", True, None), grip=True)
    assert done
    assert _frames(out)[0].code == 1002
