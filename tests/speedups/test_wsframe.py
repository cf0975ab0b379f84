"""The WebSocket frame twins (``_wsframe_c`` / ``_wsframe_py``): same results, RFC 6455 rules."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import _speedups
from tests.helpers import skip_missing

KEY = b"\x37\xfa\x21\x3d"


def test_rfc_examples(twins):
    # RFC 6455 5.7: an unmasked "Hello" and a masked "Hello"
    assert twins.ws_frame(1, b"Hello") == b"\x81\x05\x48\x65\x6c\x6c\x6f"
    masked = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    assert twins.ws_frame(1, b"Hello", True, KEY) == masked
    assert twins.ws_parse(masked, True, 1000) == ([(True, 1, b"Hello")], len(masked), 0)
    # fragmented: "Hel" + "lo"
    data = b"\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f"
    assert twins.ws_parse(data, False, 1000) == ([(False, 1, b"Hel"), (True, 0, b"lo")], 9, 0)
    # unmasked ping with a body
    assert twins.ws_frame(9, b"Hello") == b"\x89\x05Hello"


@pytest.mark.parametrize(
    "size,header",
    [
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f" + (65536).to_bytes(8, "big")),
    ],
)
def test_length_encodings(twins, size, header):
    payload = b"x" * size
    frame = twins.ws_frame(2, payload)
    assert frame == header + payload
    assert twins.ws_parse(frame, False, 1 << 20) == ([(True, 2, payload)], len(frame), 0)


def test_incomplete_frames_are_left_unconsumed(twins):
    frame = twins.ws_frame(2, b"y" * 300, True, KEY)
    for cut in range(len(frame)):
        assert twins.ws_parse(frame[:cut], True, 1000) == ([], 0, 0)
    two = frame + frame[:5]
    frames, used, err = twins.ws_parse(bytearray(two), True, 1000)
    assert (len(frames), used, err) == (1, len(frame), 0)


@pytest.mark.parametrize(
    "data,masked",
    [
        (b"\xc1\x80" + KEY, True),  # RSV1 set, no extension negotiated
        (b"\x83\x80" + KEY, True),  # reserved data opcode 3
        (b"\x8b\x80" + KEY, True),  # reserved control opcode 0xB
        (b"\x09\x80" + KEY, True),  # fragmented ping
        (b"\x89\xfe\x00\x7e" + KEY, True),  # control frame longer than 125
        (b"\x81\x05Hello", True),  # a client must mask
        (b"\x81\x85" + KEY + b"abcde", False),  # a server must not
        (b"\x82\xff\x80" + b"\x00" * 7 + KEY, True),  # 64-bit length with the top bit set
    ],
)
def test_protocol_errors(twins, data, masked):
    assert twins.ws_parse(data, masked, 1 << 20) == ([], 0, 1002)


def test_too_big_is_reported_from_the_header(twins):
    head = b"\x82\xfe\x04\x00" + KEY  # 1024 bytes announced, none sent yet
    assert twins.ws_parse(head, True, 1023) == ([], 0, 1009)
    assert twins.ws_parse(head, True, 1024) == ([], 0, 0)


def test_frames_before_an_error_are_returned(twins):
    good = twins.ws_frame(1, b"ok", True, KEY)
    frames, used, err = twins.ws_parse(good + b"\xc1\x80" + KEY, True, 100)
    assert frames == [(True, 1, b"ok")] and used == len(good) and err == 1002


def test_mask_and_bad_args(twins):
    assert twins.ws_mask(b"", KEY) == b""
    assert twins.ws_mask(twins.ws_mask(b"abcdefg", KEY), KEY) == b"abcdefg"
    with pytest.raises(ValueError):
        twins.ws_mask(b"abc", b"12")
    with pytest.raises(ValueError):
        twins.ws_frame(16, b"")
    with pytest.raises(ValueError):
        twins.ws_frame(1, b"x", True, b"123")


def test_compiled_wsframe_loaded():
    import os

    if os.environ.get("GRIPCAST_REQUIRE_SPEEDUPS") == "1":
        assert _speedups.COMPILED
        assert _speedups.ws_parse is _speedups.twin("wsframe", True).ws_parse


frames_st = st.lists(
    st.tuples(st.booleans(), st.sampled_from([0, 1, 2, 8, 9, 10]), st.binary(max_size=300)),
    max_size=6,
)


@given(
    frames_st,
    st.booleans(),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 400),
    st.binary(max_size=40),
)
def test_twins_agree(frames, masked, key, limit, junk):
    py = _speedups.twin("wsframe", compiled=False)
    try:
        c = _speedups.twin("wsframe", compiled=True)
    except ImportError:
        skip_missing("the compiled twins are not built (pip install . builds them)")
    data = b""
    for fin, op, payload in frames:
        a = c.ws_frame(op, payload, fin, key if masked else None)
        assert a == py.ws_frame(op, payload, fin, key if masked else None)
        data += a
    data += junk
    for cut in (len(data), len(data) // 2):
        assert c.ws_parse(data[:cut], masked, limit) == py.ws_parse(data[:cut], masked, limit)
    assert c.ws_mask(data, key) == py.ws_mask(data, key)


@given(st.binary(max_size=64), st.booleans(), st.integers(0, 100))
def test_twins_agree_on_garbage(data, masked, limit):
    py = _speedups.twin("wsframe", compiled=False)
    try:
        c = _speedups.twin("wsframe", compiled=True)
    except ImportError:
        skip_missing("the compiled twins are not built (pip install . builds them)")
    assert c.ws_parse(data, masked, limit) == py.ws_parse(data, masked, limit)
