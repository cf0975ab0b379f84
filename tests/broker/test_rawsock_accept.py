"""``broker.runtime.rawsock.accept_forever``, the accept loop of the edges and the publish API:
a failed connection is skipped, running out of descriptors pauses and tries again, anything
else ends the loop.  A real listening socket on 127.0.0.1 whose ``accept`` fails first as
scripted."""

from __future__ import annotations

import errno
import select
import socket
from functools import partial

import pytest
import trio
import trio.testing

from broker.runtime.rawsock import ACCEPT_PAUSE_S, accept_forever, plain_accept


class ScriptedListener:
    """A listening socket whose first ``accept`` calls raise the scripted errors."""

    def __init__(self, sock: socket.socket, errors: list[int]) -> None:
        self.sock = sock
        self.errors = list(errors)
        self.calls = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self):
        self.calls += 1
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, errno.errorcode[code])
        return self.sock.accept()


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


def run_until(errors: list[int], clients: int, clock=None):
    """Accept ``clients`` connections through a listener failing with ``errors`` first:
    (the accepted sockets, the listener, the trio time it took)."""
    lsock = listener()
    port = lsock.getsockname()[1]
    scripted = ScriptedListener(lsock, errors)
    got: list[socket.socket] = []
    peers = [connect(port) for _ in range(clients)]
    took = []

    async def main() -> None:
        t0 = trio.current_time()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                loop = partial(accept_forever, batch=8, what="test")
                nursery.start_soon(loop, scripted, lambda s, _addr: got.append(s))
                while len(got) < clients:
                    await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
        took.append(trio.current_time() - t0)

    try:
        trio.run(main, clock=clock)
    finally:
        for s in peers + got:
            s.close()
        lsock.close()
    return got, scripted, took[0]


def test_every_pending_connection_is_accepted():
    got, scripted, _ = run_until([], 5)
    assert len(got) == 5
    assert all(s.family == socket.AF_INET for s in got)


def test_a_connection_that_failed_is_skipped():
    got, scripted, took = run_until([errno.ECONNABORTED, errno.EPROTO], 2)
    assert len(got) == 2
    assert scripted.calls >= 4
    assert took < ACCEPT_PAUSE_S  # no pause for those


def test_out_of_descriptors_pauses_then_accepts(caplog):
    clock = trio.testing.MockClock(autojump_threshold=0)
    with caplog.at_level("WARNING", logger="broker.runtime.rawsock"):
        got, scripted, took = run_until([errno.EMFILE], 1, clock)
    assert len(got) == 1
    assert took >= ACCEPT_PAUSE_S
    assert "test: accept failed" in caplog.text and "pausing" in caplog.text


def test_other_errors_end_the_loop():
    with pytest.raises(BaseException) as info:
        run_until([errno.EBADF], 1)
    exc = info.value
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF


def test_an_awaitable_from_on_accept_is_served_before_the_next_accept():
    lsock = listener()
    port = lsock.getsockname()[1]
    peers = [connect(port) for _ in range(3)]
    events: list[str] = []

    async def serve_inline(sock: socket.socket) -> None:
        events.append("inline start")
        await trio.sleep(0)  # a checkpoint: the loop still waits for it
        events.append("inline end")
        sock.close()

    def on_accept(sock: socket.socket, _addr):
        events.append("accepted")
        if len(events) == 1:
            return serve_inline(sock)
        sock.close()
        return None

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(accept_forever, batch=8, what="test"), lsock, on_accept)
                while events.count("accepted") < 3:
                    await trio.sleep(0.001)
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        for s in peers:
            s.close()
        lsock.close()
    assert events[:4] == ["accepted", "inline start", "inline end", "accepted"]


# -- plain_accept: the listener's own accept without the wrapper's per-call enum work ----------


def test_plain_accept_gives_the_same_sockets_as_accept():
    lsock = listener()
    port = lsock.getsockname()[1]
    peers = [connect(port) for _ in range(2)]
    try:
        accept = plain_accept(lsock)
        assert accept != lsock.accept  # the fast one
        for peer in peers:
            assert select.select([lsock], [], [], 5)[0]  # a connection is pending
            sock, addr = accept()
            with sock:
                assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
                assert sock.getpeername() == peer.getsockname() == addr
                assert not sock.get_inheritable()  # close-on-exec, as accept() makes it
                peer.sendall(b"x")
                sock.settimeout(5)
                assert sock.recv(1) == b"x"
        with pytest.raises(BlockingIOError):  # nothing pending: as the listener's accept
            accept()
    finally:
        for p in peers:
            p.close()
        lsock.close()


def test_plain_accept_keeps_accept_where_the_shortcut_does_not_apply():
    blocking = socket.socket()
    try:
        assert plain_accept(blocking) == blocking.accept  # a blocking listener
    finally:
        blocking.close()
    scripted = ScriptedListener(listener(), [])
    try:
        assert plain_accept(scripted) == scripted.accept  # not a stdlib socket
    finally:
        scripted.sock.close()
