"""Both twins of every _speedups module: same results, and the compiled one really loads."""

import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

import _speedups
from tests.helpers import skip_missing


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"", b""),
        (b"a", b"1\r\na\r\n"),
        (b"x" * 15, b"F\r\n" + b"x" * 15 + b"\r\n"),
        (b"x" * 16, b"10\r\n" + b"x" * 16 + b"\r\n"),
        (b"\r\n\x00", b"3\r\n\r\n\x00\r\n"),
        (b"y" * 300, b"12C\r\n" + b"y" * 300 + b"\r\n"),
    ],
)
def test_http_chunk(twins, data, expected):
    assert twins.http_chunk(data) == expected


def test_http_chunks_skips_empty_parts(twins):
    assert twins.http_chunks([b"ab", b"", b"c"]) == b"2\r\nab\r\n1\r\nc\r\n"
    assert twins.http_chunks([]) == b""


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_twins_agree_on_framing(parts):
    py = _speedups.twin("framing", compiled=False)
    try:
        c = _speedups.twin("framing", compiled=True)
    except ImportError:
        skip_missing("the compiled twins are not built (pip install . builds them)")
    assert c.http_chunks(parts) == py.http_chunks(parts)
    for p in parts:
        assert c.http_chunk(p) == py.http_chunk(p)


def test_send_batch_writes_and_reports_would_block_and_errors(twins):
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    a3, b3 = socket.socketpair()
    try:
        for s in (a1, a2, a3):
            s.setblocking(False)
        b3.close()  # peer gone: the write fails with -errno, never raises
        a2.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = b"z" * (4 << 20)
        res = twins.send_batch([a1.fileno(), a2.fileno(), a3.fileno()], [b"hello", big, b"x"])
        assert res[0] == 5
        assert 0 < res[1] < len(big)  # partial write: the caller keeps the rest
        assert res[2] < 0
        assert b1.recv(10) == b"hello"
        # the full socket now would block: 0 bytes
        assert twins.send_batch([a2.fileno()], [b"more"]) == [0]
    finally:
        for s in (a1, b1, a2, b2, a3):
            s.close()


def test_compiled_twins_loaded_unless_disabled():
    """Fails if the compiled twins silently did not load (pip install builds them)."""
    if os.environ.get("GRIPCAST_NO_SPEEDUPS") == "1":
        assert _speedups.COMPILED is False
    else:
        assert _speedups.COMPILED is True, "compiled _speedups did not load: run pip install -e ."
