"""permessage-deflate (edge.ws.deflate and its use in edge.ws.connection / edge.ws.session),
checked against wsproto's own PerMessageDeflate as the independent peer.  Sans-IO."""

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from _speedups import ws_frame
from edge.ws.connection import Message, Ping, WsConnection, WsError
from edge.ws.deflate import Deflate, Inflater, deflate_message, negotiate, take_rsv1
from edge.ws.session import _frames, accept_head, message_frame


def ext(value):
    return [(b"Sec-WebSocket-Extensions", value.encode())]


@pytest.mark.parametrize(
    "offer,agreed",
    [
        ("permessage-deflate", Deflate()),
        ("permessage-deflate; client_max_window_bits", Deflate()),  # browsers
        ("permessage-deflate; client_max_window_bits=10", Deflate()),
        ("permessage-deflate; client_no_context_takeover", Deflate(True)),
        ("permessage-deflate; server_no_context_takeover", Deflate()),
        ("permessage-deflate; server_max_window_bits=15", Deflate()),
        ("permessage-deflate; server_max_window_bits=10", None),  # Pushpin: not supported
        ("permessage-deflate; server_max_window_bits", None),  # needs a value
        ("permessage-deflate; client_max_window_bits=16", None),
        ("permessage-deflate; foo", None),  # unknown parameter
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("x-webkit-deflate-frame", None),
        # several offers: the first acceptable one
        (
            "permessage-deflate; server_max_window_bits=9, permessage-deflate; "
            "client_no_context_takeover",
            Deflate(True),
        ),
    ],
)
def test_negotiation(offer, agreed):
    assert negotiate(ext(offer)) == agreed


def test_no_offer_no_compression():
    assert negotiate([(b"Host", b"x")]) is None


def test_the_answer_always_says_server_no_context_takeover():
    assert Deflate().response() == "permessage-deflate; server_no_context_takeover"
    head = accept_head(b"dGhlIHNhbXBsZSBub25jZQ==", [], Deflate(True))
    assert (
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
        b"client_no_context_takeover\r\n" in head
    )
    # wsproto's client accepts that answer to its offer
    pmd = PerMessageDeflate()
    pmd.finalize(Deflate().response())
    assert pmd.server_no_context_takeover


def wsproto_client(response: str = "permessage-deflate; server_no_context_takeover"):
    pmd = PerMessageDeflate(client_max_window_bits=15)
    pmd.finalize(response)
    return FrameProtocol(client=True, extensions=[pmd])


def client_receive(proto, data):
    proto.receive_bytes(data)
    out, parts = [], []
    for frame in proto.received_frames():
        parts.append(frame.payload)
        if frame.message_finished:
            joined = "".join(parts) if isinstance(parts[0], str) else b"".join(parts)
            out.append((frame.opcode, joined))
            parts = []
    return out


def test_a_published_frame_is_valid_for_every_client():
    """One compressed frame, built once, decodes the same for several clients, whatever they
    received before (no context carried from one message to the next)."""
    fmt = {"content": b"hello hello hello hello"}
    frame = message_frame(fmt, compressed=True)
    assert frame[0] == 0xC1  # FIN, RSV1, text
    assert len(frame) < len(message_frame(fmt))
    a, b = wsproto_client(), wsproto_client()
    client_receive(a, message_frame({"content": b"something else first"}, True))
    for proto in (a, b):
        assert client_receive(proto, frame) == [(Opcode.TEXT, "hello hello hello hello")]
        assert client_receive(proto, frame) == [(Opcode.TEXT, "hello hello hello hello")]


def test_control_frames_are_never_compressed():
    assert message_frame({"type": "ping", "content": b"p"}, compressed=True) == b"\x89\x01p"


@given(st.binary(max_size=40000))
def test_origin_messages_split_into_frames_decode(data):
    proto = wsproto_client()
    assert client_receive(proto, _frames(2, data, compressed=True)) == [(Opcode.BINARY, data)]


def test_deflate_message_is_raw_deflate_without_the_tail():
    out = deflate_message(b"abc")
    assert not out.endswith(b"\x00\x00\xff\xff")
    assert zlib.decompressobj(-15).decompress(out + b"\x00\x00\xff\xff") == b"abc"
    assert zlib.decompressobj(-15).decompress(deflate_message(b"") + b"\x00\x00\xff\xff") == b""


def test_take_rsv1_walks_headers_and_clears_the_bit():
    f1 = bytearray(ws_frame(1, b"abc", True, b"abcd"))
    f1[0] |= 0x40
    f2 = ws_frame(9, b"", True, b"abcd")
    buf = bytearray(bytes(f1) + f2[:1])
    bits, pos = take_rsv1(buf, 0)
    assert bits == [True] and pos == len(f1) and buf[0] == 0x81
    buf += f2[1:]
    bits, pos = take_rsv1(buf, pos)
    assert bits == [False] and pos == len(buf)


def compressed_client_frames(messages, no_context_takeover=False, fragment=0):
    """Frames from wsproto's client side of permessage-deflate (context takeover by default)."""
    pmd = PerMessageDeflate(client_no_context_takeover=no_context_takeover)
    pmd.finalize(Deflate(no_context_takeover).response())
    proto = FrameProtocol(client=True, extensions=[pmd])
    out = b""
    for m in messages:
        if fragment and len(m) > fragment:
            for i in range(0, len(m), fragment):
                out += proto.send_data(m[i : i + fragment], fin=i + fragment >= len(m))
        else:
            out += proto.send_data(m, fin=True)
    return out


@pytest.mark.parametrize("nct", [False, True])
def test_compressed_client_messages_are_inflated(nct):
    msgs = [b"hello hello hello", "h\u00e9llo again hello".encode(), b"", b"x" * 5000]
    data = compressed_client_frames(msgs, nct) + ws_frame(9, b"p", True, b"abcd")
    c = WsConnection(inflater=Inflater(Deflate(nct)))
    evs = []
    for i in range(0, len(data), 7):  # in pieces: headers split across reads
        evs += c.receive_data(data[i : i + 7])
    assert evs == [Message(True, m) for m in msgs] + [Ping(b"p")]


def test_fragmented_compressed_message():
    data = compressed_client_frames([b"abcdefgh" * 300], fragment=50)
    c = WsConnection(inflater=Inflater(Deflate()))
    assert c.receive_data(data) == [Message(True, b"abcdefgh" * 300)]


def test_uncompressed_messages_on_a_compressed_connection():
    c = WsConnection(inflater=Inflater(Deflate()))
    assert c.receive_data(ws_frame(1, b"plain", True, b"abcd")) == [Message(False, b"plain")]


def rsv1(frame):
    return bytes([frame[0] | 0x40]) + frame[1:]


@pytest.mark.parametrize(
    "frame,code",
    [
        (rsv1(ws_frame(9, b"", True, b"abcd")), 1002),  # control frame
        (
            ws_frame(1, b"a", False, b"abcd") + rsv1(ws_frame(0, b"b", True, b"abcd")),
            1002,
        ),  # continuation
        (rsv1(ws_frame(1, b"\xff\xff\xff", True, b"abcd")), 1007),  # not deflate data
        (rsv1(ws_frame(1, deflate_message(b"\xff\xfe"), True, b"abcd")), 1007),  # not UTF-8
        (rsv1(ws_frame(2, deflate_message(b"\x00" * 3000), True, b"abcd")), 1009),  # bomb
    ],
)
def test_compressed_protocol_errors(frame, code):
    c = WsConnection(max_message=2000, inflater=Inflater(Deflate()))
    with pytest.raises(WsError) as exc:
        c.receive_data(frame)
    assert exc.value.close_code == code


def test_rsv1_without_agreement_is_a_protocol_error():
    with pytest.raises(WsError) as exc:
        WsConnection().receive_data(rsv1(ws_frame(1, deflate_message(b"x"), True, b"abcd")))
    assert exc.value.close_code == 1002
