"""WebSocket input under hostile peers: the WebSocket-over-HTTP event codec (edge/ws/events.py),
GRIP control messages (edge/ws/control.py) and client frames (edge/ws/connection.py).  Each returns
values or raises its ``RemoteProtocolError`` (502 / a close code), never anything else; a
message over the size limit always closes with 1009.
"""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st

from broker.errors import RemoteProtocolError
from edge.ws import control as wscontrol
from edge.ws import events as wsevents
from edge.ws.connection import WsConnection
from tests.fuzz.strategies import FUZZ, nasty_number

names = st.sampled_from(
    [
        b"OPEN",
        b"TEXT",
        b"BINARY",
        b"PING",
        b"PONG",
        b"CLOSE",
        b"DISCONNECT",
        b"BOGUS",
        b"",
        b"\xff",
        b"text",
    ]
)


@st.composite
def event_bodies(draw):
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        name = draw(names)
        content = draw(st.binary(max_size=30))
        if draw(st.booleans()):
            n = draw(st.one_of(st.just(b"%x" % len(content)), nasty_number.map(str.encode)))
            out += name + b" " + n + draw(st.sampled_from([b"\r\n", b"\n", b""])) + content
            out += draw(st.sampled_from([b"\r\n", b"", b"\n"]))
        else:
            out += name + draw(st.sampled_from([b"\r\n", b"\n", b""]))
    return out


@FUZZ
@given(st.one_of(event_bodies(), st.binary(max_size=200)))
def test_decode_events(body):
    try:
        events = wsevents.decode_events(body)
    except wsevents.EventsError as exc:
        assert exc.status == 502 and exc.close_code == 1011
        return
    for e in events:
        if e.type == "CLOSE":
            wsevents.parse_close_content(e.content)


json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=10)
)
controls = st.dictionaries(
    st.sampled_from(
        [
            "type",
            "channel",
            "filters",
            "prev-id",
            "id",
            "name",
            "value",
            "mode",
            "timeout",
            "content",
            "content-bin",
            "message",
            "x",
        ]
    ),
    st.one_of(
        json_scalar,
        st.sampled_from(
            [
                "subscribe",
                "unsubscribe",
                "detach",
                "session",
                "set-meta",
                "keep-alive",
                "send-delayed",
                "flush-delayed",
                "idle",
                "interval",
            ]
        ),
        st.lists(json_scalar, max_size=3),
    ),
    max_size=6,
)


@FUZZ
@given(
    st.one_of(controls.map(lambda c: json.dumps(c).encode()), st.binary(max_size=80)),
    st.sampled_from(["", "m:", "\x00"]),
)
def test_control_messages(data, prefix):
    try:
        wscontrol.classify(b"c:" + data, prefix)
        wscontrol.classify(data, prefix)
    except RemoteProtocolError as exc:
        # 0: a bad control message the session logs and skips; otherwise the close to send
        assert exc.close_code == 0 or 1000 <= exc.close_code < 5000


def frame(fin: bool, op: int, payload: bytes, masked: bool, length_override=None) -> bytes:
    b0 = (0x80 if fin else 0) | (op & 0x0F)
    n = len(payload) if length_override is None else length_override
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 65536:
        head = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if masked:
        key = os.urandom(4)
        head += key
        payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return head + payload


frames = st.builds(
    frame,
    st.booleans(),
    st.integers(0, 15),
    st.binary(max_size=64),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 2**63 - 1)),
)


@FUZZ
@given(st.lists(st.one_of(frames, st.binary(max_size=20)), max_size=6), st.integers(1, 100))
def test_client_frames(chunks, limit):
    ws = WsConnection(max_message=limit)
    for c in chunks:
        try:
            events = ws.receive_data(c)
        except RemoteProtocolError as exc:
            assert 1000 <= exc.close_code < 5000
            return
        for e in events:
            data = getattr(e, "data", None)
            if isinstance(data, (bytes, str)):
                assert len(data) <= limit * 4  # text may be a str of at most limit bytes


@FUZZ
@given(st.integers(2, 64), st.integers(1, 4))
def test_oversized_message_closes_1009(limit, parts):
    ws = WsConnection(max_message=limit)
    piece = b"a" * (limit // parts + 1)
    data = b"".join(frame(i == parts - 1, 1 if i == 0 else 0, piece, True) for i in range(parts))
    if len(piece) * parts <= limit:
        return
    try:
        ws.receive_data(data)
    except RemoteProtocolError as exc:
        assert exc.close_code == 1009
    else:
        raise AssertionError("an oversized message was accepted")


def test_deeply_nested_control_json_is_a_clear_error():
    for doc in (b"[" * 100_000, b'{"type":' * 50_000):
        try:
            wscontrol.classify(b"c:" + doc, "")
        except RemoteProtocolError:
            pass
