"""trio internals the edge relies on, in one place (``edge.fastpath.stdlib_socket``): if a trio
release moves its private ``_sock``, this fails loudly instead of the accept loop and the
origin pool quietly taking their slower fallbacks."""

import socket

import trio

from edge.fastpath import stdlib_socket


def test_trio_socket_still_wraps_a_stdlib_socket():
    a, b = socket.socketpair()
    try:
        ts = trio.socket.from_stdlib_socket(a)
        raw = stdlib_socket(ts)
        assert isinstance(raw, socket.socket), (
            "trio no longer keeps its stdlib socket in '_sock': update edge.fastpath.stdlib_socket"
        )
        assert raw.fileno() == ts.fileno()
    finally:
        a.close()
        b.close()


def test_not_a_trio_socket():
    assert stdlib_socket(object()) is None
