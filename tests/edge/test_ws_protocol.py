"""Sans-IO WebSocket pieces: the connection state machine, the WOH event codec, GRIP control
messages, WOH request/response rules and the handshake.  No sockets, no sleeps."""

import base64

import pytest
from gripcontrol import WebSocketEvent, decode_websocket_events, encode_websocket_events
from hypothesis import given
from hypothesis import strategies as st

from _speedups import ws_frame, ws_parse
from edge.ws import control as wc
from edge.ws.connection import Close, CloseState, Message, Ping, Pong, WsConnection, WsError
from edge.ws.events import EventsError, WsEvent, decode_events, encode_events
from edge.ws.over_http import apply_headers, check_response, replay_headers, woh_headers
from edge.ws.session import (
    HandshakeError,
    accept_head,
    check_handshake,
    is_websocket_request,
    message_frame,
)

KEY = b"abcd"


def client_frame(op, payload, fin=True):
    return ws_frame(op, payload, fin, KEY)


# -- WsConnection ------------------------------------------------------------------------------


def test_messages_fragments_and_interleaved_control():
    c = WsConnection()
    data = (
        client_frame(1, b"hel", False)
        + client_frame(9, b"p")
        + client_frame(0, b"lo")
        + client_frame(2, b"\x00\xff")
    )
    evs = []
    for i in range(len(data)):  # byte by byte: partial frames wait
        evs += c.receive_data(data[i : i + 1])
    assert evs == [Ping(b"p"), Message(False, b"hello"), Message(True, b"\x00\xff")]


@pytest.mark.parametrize(
    "data,code",
    [
        (ws_frame(1, b"x"), 1002),  # unmasked from a client
        (client_frame(0, b"x"), 1002),  # continuation, no message
        (client_frame(1, b"a", False) + client_frame(1, b"b"), 1002),  # new message mid-message
        (client_frame(1, b"\xff\xfe"), 1007),  # text not UTF-8
        (client_frame(8, b"\x03"), 1002),  # 1-byte close payload
        (client_frame(8, (1005).to_bytes(2, "big")), 1002),  # reserved close code
        (client_frame(8, (1000).to_bytes(2, "big") + b"\xff"), 1007),  # close reason not UTF-8
    ],
)
def test_protocol_errors_carry_close_codes(data, code):
    with pytest.raises(WsError) as exc:
        WsConnection().receive_data(data)
    assert exc.value.close_code == code


def test_max_message_size_counts_all_fragments():
    c = WsConnection(max_message=10)
    assert c.receive_data(client_frame(2, b"x" * 6, False)) == []
    with pytest.raises(WsError) as exc:
        c.receive_data(client_frame(0, b"x" * 6))
    assert exc.value.close_code == 1009
    with pytest.raises(WsError) as exc:  # a single frame over the limit, from its header
        WsConnection(max_message=10).receive_data(client_frame(2, b"y" * 11)[:6])
    assert exc.value.close_code == 1009


def test_close_handshake_remote_first():
    c = WsConnection()
    evs = c.receive_data(
        client_frame(8, (4001).to_bytes(2, "big") + b"bye") + client_frame(1, b"late")
    )
    assert evs == [Close(4001, "bye")] and c.state is CloseState.REMOTE_RECEIVED
    assert c.receive_data(client_frame(1, b"more")) == []
    out = c.close(4001, "bye")
    assert out == ws_frame(8, (4001).to_bytes(2, "big") + b"bye") and c.closed
    assert c.close() == b"" and c.message(b"x") == b""


def test_close_handshake_local_first_and_no_data_after():
    c = WsConnection()
    assert c.close(1000, "done") == ws_frame(8, b"\x03\xe8done")
    assert c.state is CloseState.LOCAL_SENT and c.message(b"x") == b"" and c.ping() == b""
    assert c.receive_data(client_frame(1, b"ignored") + client_frame(8, b"")) == [Close(None, "")]
    assert c.closed


def test_close_codes_sanitised_and_reason_cut():
    assert WsConnection().close(1006) == ws_frame(8, (1000).to_bytes(2, "big"))
    out = WsConnection().close(4000, "é" * 100)
    assert len(out) - 2 <= 125
    frames, _, _ = ws_parse(out, False, 200)
    frames[0][2][2:].decode("utf-8")


def test_client_role_masks_and_accepts_unmasked():
    c = WsConnection(client=True, mask_key=lambda n: KEY)
    assert c.message(b"Hello") == ws_frame(1, b"Hello", True, KEY)
    assert c.receive_data(ws_frame(10, b"p")) == [Pong(b"p")]
    with pytest.raises(WsError):
        WsConnection(client=True).receive_data(client_frame(1, b"x"))


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=5), st.integers(1, 7))
def test_any_split_gives_the_same_message(parts, step):
    data = b"".join(
        client_frame(2 if i == 0 else 0, p, i == len(parts) - 1) for i, p in enumerate(parts)
    )
    c = WsConnection()
    evs = []
    for i in range(0, len(data), step):
        evs += c.receive_data(data[i : i + step])
    assert evs == [Message(True, b"".join(parts))]


# -- event codec -------------------------------------------------------------------------------


def test_events_roundtrip_with_gripcontrol():
    evs = [
        WsEvent("OPEN"),
        WsEvent("TEXT", b"hello"),
        WsEvent("BINARY", b"\x00\r\n"),
        WsEvent("PING"),
        WsEvent("CLOSE", b"\x03\xe8bye"),
        WsEvent("DISCONNECT"),
    ]
    body = encode_events(evs)
    assert body.startswith(b"OPEN\r\nTEXT 5\r\nhello\r\nBINARY 3\r\n\x00\r\n\r\nPING\r\n")
    theirs = decode_websocket_events(body)
    assert [(e.type, e.content) for e in theirs] == [(e.type, e.content) for e in evs]
    back = encode_websocket_events([WebSocketEvent(e.type, e.content) for e in evs])
    assert decode_events(back) == evs


def test_events_length_any_hex_and_errors():
    assert decode_events(b"TEXT 0A\r\n0123456789\r\n") == [WsEvent("TEXT", b"0123456789")]
    assert decode_events(b"TEXT 10\r\nshort") == [WsEvent("TEXT", b"short")]  # as Pushpin
    for bad in (b"OPEN", b"TEXT zz\r\nabc\r\n", b"TEXT 3\r\nabc\r\nCLOSE"):
        with pytest.raises(EventsError):
            decode_events(bad)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["TEXT", "BINARY", "PING", "CLOSE", "OPEN"]),
            st.one_of(st.none(), st.binary(max_size=40)),
        )
    )
)
def test_events_roundtrip(evs):
    events = [WsEvent(t, c) for t, c in evs]
    assert decode_events(encode_events(events)) == events


# -- control messages --------------------------------------------------------------------------


def test_grip_prefix():
    assert wc.grip_prefix([]) is None
    assert wc.grip_prefix(["permessage-deflate"]) is None
    assert wc.grip_prefix(["grip"]) == "m:"
    assert wc.grip_prefix(['grip; message-prefix=""']) == ""
    assert wc.grip_prefix(['foo, grip; message-prefix="x:"']) == "x:"


def test_control_messages():
    p = wc.parse_control
    assert p(
        '{"type":"subscribe","channel":"a","filters":["skip-self"],"prev-id":"7"}'
    ) == wc.Subscribe("a", ("skip-self",), "7")
    assert p('{"type":"unsubscribe","channel":"a"}') == wc.Unsubscribe("a")
    assert p('{"type":"detach"}') == wc.Detach()
    assert p('{"type":"set-meta","name":"user","value":"bob"}') == wc.SetMeta("user", "bob")
    assert p('{"type":"set-meta","name":"user"}') == wc.SetMeta("user", None)
    assert p('{"type":"keep-alive","content":"ka","timeout":20}') == wc.KeepAlive(
        wc.OutMessage("text", b"ka"), 20.0, "idle"
    )
    assert p('{"type":"keep-alive"}') == wc.KeepAlive(None, 55.0, "idle")
    b64 = base64.b64encode(b"\x00\x01").decode()
    assert p('{"type":"send-delayed","content-bin":"' + b64 + '","mode":"x"}') == wc.SendDelayed(
        wc.OutMessage("binary", b"\x00\x01"), 1.0
    )
    assert p(
        '{"type":"keep-alive","content":"p","message-type":"ping","mode":"interval"}'
    ) == wc.KeepAlive(wc.OutMessage("ping", b"p"), 55.0, "interval")
    assert p('{"type":"flush-delayed"}') == wc.FlushDelayed()


@pytest.mark.parametrize(
    "text,close",
    [
        ("not json", 0),
        ("[]", 0),
        ('{"type":"subscribe"}', 0),
        ('{"type":"nope"}', 0),
        ('{"type":"subscribe","channel":"a","filters":["a","b","c","d","e","f"]}', 1011),
        ('{"type":"send-delayed"}', 0),
        ('{"type":"keep-alive","content":"x","timeout":-1}', 0),
        ('{"type":"keep-alive","content-bin":"!!"}', 0),
    ],
)
def test_bad_control_messages(text, close):
    with pytest.raises(wc.WsControlError) as exc:
        wc.parse_control(text)
    assert exc.value.close_code == close


def test_classify():
    assert wc.classify(b'c:{"type":"detach"}', "m:") == ("control", wc.Detach())
    assert wc.classify(b"m:hi", "m:") == ("message", b"hi")
    assert wc.classify(b"hi", "m:") == ("drop", "unprefixed message")
    assert wc.classify(b"hi", "") == ("message", b"hi")


# -- WOH request and response rules ----------------------------------------------------------


def test_replayed_headers_strip_meta_and_hop_by_hop():
    client = [
        (b"Host", b"h"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", b"k"),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
        (b"Meta-User", b"spoof"),
        (b"Connection-Id", b"spoof"),
        (b"Accept", b"*/*"),
        (b"X-Client", b"c1"),
    ]
    assert replay_headers(client) == [
        (b"Host", b"h"),
        (b"Sec-WebSocket-Key", b"k"),
        (b"Sec-WebSocket-Version", b"13"),
        (b"X-Client", b"c1"),
    ]
    hs = woh_headers("cid-1", {"User": "alice"})
    assert (b"Connection-Id", b"cid-1") in hs and (b"Meta-User", b"alice") in hs
    assert (b"Sec-WebSocket-Extensions", b"grip") in hs
    assert (b"Content-Type", b"application/websocket-events") in hs


def test_response_checks_and_meta():
    ok = [(b"Content-Type", b"application/websocket-events")]
    assert check_response(200, ok) is None
    assert check_response(404, ok)
    assert check_response(200, [(b"Content-Type", b"application/websocket-events; charset=x")])
    meta = {"User": "x"}
    assert (
        apply_headers(
            [
                (b"Set-Meta-user", b"alice"),
                (b"Set-Meta-Room", b"r1"),
                (b"Keep-Alive-Interval", b"5"),
            ],
            meta,
        )
        == 20.0
    )
    assert meta == {"User": "alice", "Room": "r1"}
    apply_headers([(b"Set-Meta-Room", b"")], meta)
    assert meta == {"User": "alice"}


# -- handshake ---------------------------------------------------------------------------------


def hs(over=None):
    h = {
        b"Host": b"x",
        b"Upgrade": b"websocket",
        b"Connection": b"keep-alive, Upgrade",
        b"Sec-WebSocket-Version": b"13",
        b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
    }
    h.update(over or {})
    return [(k, v) for k, v in h.items() if v is not None]


def test_handshake():
    assert is_websocket_request(hs()) and not is_websocket_request([(b"Upgrade", b"h2c")])
    key = check_handshake(b"GET", hs())
    head = accept_head(
        key,
        [
            (b"Server", b"o"),
            (b"Set-Meta-User", b"a"),
            (b"Content-Length", b"9"),
            (b"Sec-WebSocket-Extensions", b"grip"),
        ],
    )
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head  # RFC 6455 example
    assert b"Server: o" in head and b"Set-Meta" not in head and b"Content-Length" not in head
    assert b"Sec-WebSocket-Extensions" not in head
    for method, h, status in (
        (b"POST", hs(), 405),
        (b"GET", hs({b"Sec-WebSocket-Version": b"8"}), 426),
        (b"GET", hs({b"Sec-WebSocket-Key": b"short"}), 400),
        (b"GET", hs({b"Connection": b"close"}), 400),
    ):
        with pytest.raises(HandshakeError) as exc:
            check_handshake(method, h)
        assert exc.value.status == status
        assert exc.value.response().startswith(b"HTTP/1.1 %d" % status)


def test_published_frames():
    assert message_frame({"type": "text", "content": b"hi"}) == b"\x81\x02hi"
    assert message_frame({"type": "binary", "content": b"\x00"}) == b"\x82\x01\x00"
    assert message_frame({"type": "ping", "content": b""}) == b"\x89\x00"
    assert message_frame({"type": "pong", "content": b"x" * 200})[:2] == b"\x8a\x7d"


def test_grip_extension_keeps_only_the_grip_entries_with_their_parameters():
    from edge.ws.control import grip_extension

    assert grip_extension(['permessage-deflate, grip; message-prefix=""']) == (
        b'grip; message-prefix=""'
    )
    assert grip_extension(["x-other", "GRIP"]) == b"GRIP"
    assert grip_extension(["permessage-deflate"]) == b""
    assert grip_extension([]) == b""
