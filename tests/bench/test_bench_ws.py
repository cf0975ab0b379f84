"""The bench's WebSocket pieces, sans-IO: the origin's WebSocket-over-HTTP answers and the
swarm's frame parsing (incremental, any split)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from _speedups import ws_frame
from bench.origin import respond
from bench.publisher import format_item, probe_item
from bench.swarm import Client, deframe


def test_origin_accepts_open_with_a_subscribe_control_message():
    r = respond(b"/ws/c3", None, True, b"OPEN\r\n")
    head, _, body = r.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: application/websocket-events" in head
    assert b"Sec-WebSocket-Extensions: grip" in head
    assert b"Content-Length: %d" % len(body) in head
    msg = b'c:{"type": "subscribe", "channel": "c3"}'
    assert body == b"OPEN\r\nTEXT %x\r\n%s\r\n" % (len(msg), msg)
    assert respond(b"/ws/c3", None, True, b"CLOSE 2\r\n\x03\xe8\r\n").endswith(b"\r\n\r\nCLOSE\r\n")
    assert respond(b"/ws/c3", None, True, b"PING\r\n").endswith(b"Content-Length: 0\r\n\r\n")


def test_ws_formats():
    assert format_item("ws", "c0", 7, 1.5) == {
        "channel": "c0",
        "id": "7",
        "formats": {"ws-message": {"content": "M7 1.500000"}},
    }
    assert probe_item("ws", "c0", 2)["formats"] == {"ws-message": {"content": "P2"}}


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.data())
def test_deframe_any_split(payloads, data):
    frames = b"".join(ws_frame(1, p) for p in payloads) + ws_frame(9, b"ping")
    cut = sorted(data.draw(st.lists(st.integers(0, len(frames)), max_size=4)))
    c = Client(0, "c0", 10)
    out, prev = [], 0
    for i in cut + [len(frames)]:
        got, ended = deframe(c, frames[prev:i])
        assert not ended
        out.append(got)
        prev = i
    assert b"".join(out) == b"".join(p + b"\n" for p in payloads)
    _, ended = deframe(c, ws_frame(8, b"\x03\xe8"))
    assert ended
