"""Issue 11: what a publisher or an origin names cannot reach a client head unchecked, cannot
reach another tenant's channels, and cannot grow a WebSocket message without bound (no sockets)."""

from __future__ import annotations

import re

import pytest
import trio

from _speedups import ws_frame
from edge.grip.instruct import Hold
from edge.http1 import responses
from edge.ws import control as wc
from edge.ws.connection import MAX_MESSAGE_FRAGMENTS, Message, WsConnection, WsError
from edge.ws.session import WsSession, accept_head

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def check_head(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The status line and fields of one head; asserts it is one well-formed head."""
    assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1
    lines = data[:-4].split(b"\r\n")
    status = lines[0]
    m = re.fullmatch(rb"HTTP/1\.[01] (\d{3}) ([\t\x20-\x7e\x80-\xff]*)", status)
    assert m, status
    fields = []
    for line in lines[1:]:
        assert b"\n" not in line and b"\r" not in line and b"\x00" not in line
        name, sep, value = line.partition(b": ")
        assert sep and TOKEN.fullmatch(name) and FIELD.fullmatch(value), line
        fields.append((name, value))
    return status, fields


INJECTIONS = [
    "OK\r\nSet-Cookie: session=ALICE\r\n\r\nHTTP/1.1 200 OK",
    "a\nb",
    "a\rb",
    "a\x00b",
    "\x7f",
    "\x1b[0m",
]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_head_never_writes_a_bad_reason_or_field(bad):
    data = responses.head(
        200,
        bad,
        [
            ("X-Ok", "1"),
            (bad, "v"),
            ("X-Bad", bad),
            ("X Space", "v"),
            ("X:Colon", "v"),
            ("", "v"),
            (b"X-Bytes\r\nY", b"v"),
            ("X-Tab", "a\tb"),
        ],
    )
    status, fields = check_head(data)
    assert status == b"HTTP/1.1 200 OK"
    assert fields == [(b"X-Ok", b"1"), (b"X-Tab", b"a\tb")]
    assert b"ALICE" not in data


def test_published_response_and_timeout_and_stream_heads_are_checked():
    hold = Hold(
        mode="response",
        code=200,
        reason="OK\r\nX-Evil: 1",
        body=b"t",
        headers=[("X-Origin", "o\r\nX-Evil: 2"), ("X-Fine", "yes")],
    )
    fmt = {
        "action": "send",
        "code": 202,
        "reason": "Yes\r\nSet-Cookie: a=b",
        "headers": [["X-Pub", "p\nX-Evil: 3"], ["Bad Name", "1"], ["X-Good", "g"]],
        "body": b"hi",
    }
    for data in (
        responses.published(hold, fmt),
        responses.timeout(hold),
        responses.stream_head(hold, chunked=True),
    ):
        head = data[: data.index(b"\r\n\r\n") + 4]
        status, fields = check_head(head)
        assert b"X-Evil" not in head and b"Set-Cookie" not in head
    assert responses.published(hold, fmt).startswith(b"HTTP/1.1 202 Accepted\r\n")


def test_websocket_accept_head_is_checked():
    data = accept_head(b"dGhlIHNhbXBsZSBub25jZQ==", [(b"X-A", b"1\r\nX-Evil: 1"), (b"B C", b"2")])
    status, fields = check_head(data)
    assert status == b"HTTP/1.1 101 Switching Protocols"
    assert all(name not in (b"X-A", b"B C") for name, _ in fields)


# -- WebSocket continuation frames (item 9) -----------------------------------------------------


def client_frame(op, payload, fin=True):
    return ws_frame(op, payload, fin, b"\x01\x02\x03\x04")


def test_empty_continuations_are_bounded():
    c = WsConnection()
    assert c.receive_data(client_frame(1, b"a", False)) == []
    data = client_frame(0, b"", False) * (MAX_MESSAGE_FRAGMENTS - 2)
    assert c.receive_data(data) == []
    assert c.receive_data(client_frame(0, b"b")) == [Message(False, b"ab")]
    c.receive_data(client_frame(2, b"", False))
    with pytest.raises(WsError) as exc:
        c.receive_data(client_frame(0, b"", False) * MAX_MESSAGE_FRAGMENTS)
    assert exc.value.close_code == 1009


# -- route prefix= on WebSocket channels (item 5) -----------------------------------------------


class FakeHub:
    def __init__(self) -> None:
        self.subs: dict = {}

    def channels_of(self, s):
        return list(self.subs.get(s, []))

    def remove(self, s, now) -> None:
        self.subs.pop(s, None)


class FakeApp:
    def __init__(self) -> None:
        self.hub = FakeHub()
        self.resumed: list = []

    def add_session(self, s, channels) -> None:
        self.hub.subs[s] = list(channels)

    async def resume(self, s, channel, cursor) -> bool:
        self.resumed.append((channel, cursor))
        return False

    def positioned(self, channels) -> bool:
        return True  # (test_ws_subscribe_position: a channel not yet positioned)


class FakeSide:
    fixed_channels = ("news",)

    def __init__(self) -> None:
        self.events: list = []

    async def client_event(self, type_, content) -> None:
        self.events.append((type_, content))


class FakeSock:
    def fileno(self) -> int:
        return 99


def test_websocket_channels_get_the_route_prefix():
    async def main():
        app, side = FakeApp(), FakeSide()
        s = WsSession(app, FakeSock(), side, "", 0.0, 1 << 20, chan_prefix="tenant1-")
        s.set_channels([s.channel(c) for c in side.fixed_channels])
        await s.control(wc.parse_control(b'{"type": "subscribe", "channel": "tenant2-secret"}'))
        assert app.hub.subs[s] == ["tenant1-news", "tenant1-tenant2-secret"]
        await s.control(
            wc.parse_control(b'{"type": "subscribe", "channel": "room", "prev-id": "7"}')
        )
        assert app.resumed == [("tenant1-room", "7")]
        # the origin hears its own names back
        assert side.events and b'"channel": "room"' in side.events[-1][1]
        await s.control(wc.parse_control(b'{"type": "unsubscribe", "channel": "tenant2-secret"}'))
        await s.control(wc.parse_control(b'{"type": "unsubscribe", "channel": "news"}'))
        assert app.hub.subs[s] == ["tenant1-news", "tenant1-room"]

    trio.run(main)


@pytest.mark.parametrize("code", [0, 7, 99, 1000, -1])
def test_a_status_code_that_is_not_three_digits_is_written_as_502(code):
    data = responses.full(code, "Whatever", [("X-A", "1")], b"body")
    status, fields = check_head(data[: data.index(b"\r\n\r\n") + 4])
    assert status == b"HTTP/1.1 502 Bad Gateway"
    assert (b"Content-Length", b"4") in fields and data.endswith(b"\r\n\r\nbody")
