"""``broker.runtime.rawsock.accept_forever``, the accept loop of the edges and the publish API:
a failed connection is skipped, running out of descriptors pauses and tries again, anything
else ends the loop.  A real listening socket on 127.0.0.1 whose ``accept`` fails first as
scripted."""

from __future__ import annotations

import socket
from functools import partial

import trio

from broker.runtime.rawsock import accept_forever
from tests.acceptscript import (
    ScriptedListener,
    check_ends_on_other_errors,
    check_pauses_when_out_of_descriptors,
    check_skips_a_failed_connection,
    listener,
    run_accepting,
)


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

    def start(nursery: trio.Nursery) -> None:
        loop = partial(accept_forever, batch=8, what="test")
        nursery.start_soon(loop, scripted, lambda s, _addr: got.append(s))

    try:
        took = run_accepting(start, got, clients, clock)
    finally:
        for s in peers + got:
            s.close()
        lsock.close()
    return got, scripted, took


def test_every_pending_connection_is_accepted():
    got, scripted, _ = run_until([], 5)
    assert len(got) == 5
    assert all(s.family == socket.AF_INET for s in got)


def _run(errors: list[int], clients: int, clock) -> tuple[int, float]:
    got, _, took = run_until(errors, clients, clock)
    return len(got), took


def test_a_connection_that_failed_is_skipped():
    check_skips_a_failed_connection(_run)


def test_out_of_descriptors_pauses_then_accepts(caplog):
    check_pauses_when_out_of_descriptors(_run, caplog, "test")


def test_other_errors_end_the_loop():
    check_ends_on_other_errors(_run)
