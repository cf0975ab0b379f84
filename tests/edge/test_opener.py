"""edge.opener.Opener on real sockets (a listener on 127.0.0.1, socketpairs for the "origin"):
a connection's coroutine runs without a task of its own while it waits only through
``edge.opener.wait_readable``; a trio trap, or a wait under an open cancel scope, makes the
opener donate its task to that connection and a new opener go on; ``notify_closing`` ends a
wait held there as trio's would; stopping the edge ends every connection held there as a
cancelled task."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from edge import opener as op_mod
from edge.opener import Opener
from edge.origin.client import connect_first
from edge.readtimer import ReadTimer
from edge.routes import Target
from tests.acceptscript import (
    ScriptedListener,
    check_ends_on_other_errors,
    check_pauses_when_out_of_descriptors,
    check_skips_a_failed_connection,
    listener,
    run_accepting,
)


def _run(serve: Callable[[trio.socket.SocketType, Any], Any], body) -> Opener:
    """Run ``body(opener, port)`` with an opener whose connections ``serve(sock, addr)``
    (an async function) serves; the opener, for its counters."""
    ls = listener()
    port = ls.getsockname()[1]
    box: list[Opener] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            opener = Opener([ls], lambda s, a: serve(s, a), nursery.start_soon)
            box.append(opener)
            nursery.start_soon(opener.serve)
            with trio.fail_after(10):  # a wake that never comes fails, not hangs
                await body(opener, port)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        ls.close()
    return box[0]


async def _connect(port: int) -> trio.socket.SocketType:
    c = trio.socket.socket()
    await c.connect(("127.0.0.1", port))
    return c


async def _recv_all(c: trio.socket.SocketType) -> bytes:
    out = b""
    while True:
        data = await c.recv(4096)
        if not data:
            return out
        out += data


def _write(sock: trio.socket.SocketType, data: bytes) -> None:
    """A write without a trio trap (as the edge's ``send_now``)."""
    assert os.write(sock.fileno(), data) == len(data)


def _origin_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_a_connection_that_only_waits_here_runs_without_a_task():
    tasks: list[Any] = []

    async def serve(sock: trio.socket.SocketType, addr: Any) -> None:
        tasks.append(trio.lowlevel.current_task())
        with sock:
            await op_mod.wait_readable(mine)  # the "origin's answer"
            await op_mod.wait_readable(mine)  # (readable still: a second wait, same fd)
            _write(sock, b"answer:" + mine.recv(100))

    mine, theirs = _origin_pair()

    async def body(opener: Opener, port: int) -> None:
        c = await _connect(port)
        await trio.testing.wait_all_tasks_blocked()
        assert opener.driven == 1
        theirs.send(b"x")
        assert await _recv_all(c) == b"answer:x"
        c.close()

    opener = _run(serve, body)
    assert opener.statistics() == (1, 0)  # driven, never donated
    assert tasks[0].name.endswith("serve")  # it ran in the opener's task
    mine.close()
    theirs.close()


def test_a_trio_trap_donates_the_task_and_a_new_opener_goes_on():
    done: list[str] = []

    async def serve(sock: trio.socket.SocketType, addr: Any) -> None:
        with sock:
            data = await sock.recv(100)  # a trio trap (nothing sent yet: it waits)
            await trio.sleep(0)
            await sock.send(b"echo:" + data)
            done.append("first")

    async def body(opener: Opener, port: int) -> None:
        c1 = await _connect(port)
        await trio.testing.wait_all_tasks_blocked()
        assert opener.donated == 1
        c2 = await _connect(port)  # accepted by the new opener while c1's task waits
        await trio.testing.wait_all_tasks_blocked()
        assert opener.driven == 2 and opener.donated == 2
        await c2.send(b"two")
        await c1.send(b"one")
        assert await _recv_all(c1) == b"echo:one"
        assert await _recv_all(c2) == b"echo:two"
        c1.close()
        c2.close()

    _run(serve, body)
    assert done == ["first", "first"]


async def _read_timing_out(mine: socket.socket) -> str:
    with trio.move_on_after(0.2) as scope:
        await op_mod.wait_readable(mine)  # nothing comes: the scope's deadline ends it
    return "timed out" if scope.cancelled_caught else "read"


async def _writable_in_a_scope(mine: socket.socket) -> str:
    with trio.CancelScope():  # (a write wait given to a task waits for writability)
        await op_mod.wait_writable(mine, new=True)
    return "writable"


@pytest.mark.parametrize(
    "wait, expected",
    [(_read_timing_out, "timed out"), (_writable_in_a_scope, "writable")],
)
def test_a_wait_under_a_cancel_scope_is_a_task_of_its_own(wait, expected):
    mine, theirs = _origin_pair()  # writable at once, never readable
    outcome: list[str] = []

    async def serve(sock: trio.socket.SocketType, addr: Any) -> None:
        with sock:
            outcome.append(await wait(mine))
            _write(sock, b"done")

    async def body(opener: Opener, port: int) -> None:
        c = await _connect(port)
        assert await _recv_all(c) == b"done"
        assert opener.donated == 1
        c.close()

    _run(serve, body)
    assert outcome == [expected]
    mine.close()
    theirs.close()


def test_notify_closing_ends_a_wait_held_by_the_opener():
    mine, theirs = _origin_pair()
    seen: list[type[BaseException]] = []

    async def serve(sock: trio.socket.SocketType, addr: Any) -> None:
        with sock:
            try:
                await op_mod.wait_readable(mine)
            except trio.ClosedResourceError as exc:
                seen.append(type(exc))
            _write(sock, b"closed")

    async def body(opener: Opener, port: int) -> None:
        c = await _connect(port)
        await trio.testing.wait_all_tasks_blocked()
        assert opener.driven == 1
        op_mod.notify_closing(mine)  # what edge.readtimer does at a timeout
        assert await _recv_all(c) == b"closed"
        c.close()

    opener = _run(serve, body)
    assert seen == [trio.ClosedResourceError]
    assert opener.donated == 0
    mine.close()
    theirs.close()


def test_stopping_ends_held_connections_as_cancelled_tasks():
    mine, theirs = _origin_pair()
    ended: list[str] = []

    async def serve(sock: trio.socket.SocketType, addr: Any) -> None:
        try:
            with sock:
                await op_mod.wait_readable(mine)  # never answered
                ended.append("answered")
        except trio.Cancelled:
            ended.append("cancelled")
            raise

    async def body(opener: Opener, port: int) -> None:
        c = await _connect(port)
        await trio.testing.wait_all_tasks_blocked()
        assert opener.driven == 1
        c.close()

    _run(serve, body)  # the nursery is cancelled with the connection still waiting
    assert ended == ["cancelled"]
    mine.close()
    theirs.close()


def test_a_refused_connection_is_not_driven():
    refused: list[Any] = []

    def on_accept(sock: trio.socket.SocketType, addr: Any) -> Awaitable[None] | None:
        refused.append(addr)
        sock.close()
        return None

    async def body(opener: Opener, port: int) -> None:
        c = await _connect(port)
        assert await _recv_all(c) == b""
        c.close()

    opener = _run(on_accept, body)
    assert len(refused) == 1
    assert opener.statistics() == (0, 0)


def test_start_soon_runs_a_coroutine_in_the_opener_and_pokes_it_awake():
    ran: list[tuple[str, Any]] = []

    async def woken(tag: str) -> None:  # what edge.parking's wake starts
        ran.append((tag, trio.lowlevel.current_task().name))

    async def body(opener: Opener, port: int) -> None:
        await trio.testing.wait_all_tasks_blocked()  # the opener waits in trio: a poke wakes it
        opener.start_soon(woken, "a", name="client")
        opener.start_soon(woken, "b", name="client")  # (one poke for both)
        await trio.testing.wait_all_tasks_blocked()
        assert [tag for tag, _ in ran] == ["a", "b"]
        assert all(name.endswith("Opener.serve") for _, name in ran), ran

    opener = _run(lambda s, a: None, body)
    assert opener.donated == 0


def test_start_soon_after_the_opener_stopped_is_a_task():
    ran: list[str] = []

    async def woken(tag: str) -> None:
        ran.append(tag)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            opener = Opener((), lambda s, a: None, nursery.start_soon)
            with trio.CancelScope() as scope:
                scope.cancel()
                await opener.serve()  # cancelled at once: the opener stops
            opener.start_soon(woken, "late", name="client")
        assert ran == ["late"]

    trio.run(main)


def _accept_through(errors: list[int], clients: int, clock: Any = None) -> tuple[int, float]:
    """Connections accepted through a listener failing with ``errors`` first, and the trio
    time it took to accept ``clients``."""
    ls = listener()
    port = ls.getsockname()[1]
    scripted = ScriptedListener(ls, errors)
    peers = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    got: list[trio.socket.SocketType] = []

    def on_accept(sock: trio.socket.SocketType, addr: Any) -> None:
        got.append(sock)
        sock.close()  # (in trio: its close tells trio)

    def start(nursery: trio.Nursery) -> None:
        opener = Opener([scripted], on_accept, nursery.start_soon)
        nursery.start_soon(opener.serve)

    try:
        took = run_accepting(start, got, clients, clock)
    finally:
        for s in peers:
            s.close()
        ls.close()
    return len(got), took


def test_a_connection_that_failed_before_its_accept_is_skipped():
    check_skips_a_failed_connection(_accept_through)


def test_out_of_descriptors_pauses_the_listener_then_accepts(caplog):
    check_pauses_when_out_of_descriptors(_accept_through, caplog, "edge")


def test_another_accept_error_ends_the_opener():
    check_ends_on_other_errors(_accept_through)


def test_a_connect_to_an_origin_at_an_ip_address_waits_in_the_opener():
    """edge.origin.client.connect_first in a driven coroutine: a refused target is skipped
    with the kernel's reason, the next one connects (a usable trio stream), no task needed;
    in a task the same call takes trio's connect."""
    origin = listener()
    closed = listener()
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    targets = [Target("127.0.0.1", refused_port), Target("127.0.0.1", origin.getsockname()[1])]
    seen: list[Any] = []

    async def connect(timer: ReadTimer) -> None:
        errors: list[str] = []
        i, target, stream, reused = await connect_first(targets, 5.0, errors=errors, timer=timer)
        assert isinstance(stream, trio.SocketStream) and (i, reused) == (1, False)
        assert os.write(stream.socket.fileno(), b"ping") == 4
        seen.append((errors, op_mod.driving()))
        stream.socket.close()

    def run(driven: bool) -> None:
        async def main() -> None:
            timer = ReadTimer()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(timer.serve)
                opener = Opener((), lambda s, a: None, nursery.start_soon)
                nursery.start_soon(opener.serve)
                await trio.testing.wait_all_tasks_blocked()
                if driven:
                    opener.start_soon(connect, timer)
                else:
                    nursery.start_soon(connect, timer)
                with trio.fail_after(5):
                    while len(seen) < (1 if driven else 2):
                        await trio.sleep(0.01)
                assert opener.donated == 0
                nursery.cancel_scope.cancel()

        trio.run(main)
        peer, _ = origin.accept()
        assert peer.recv(10) == b"ping"
        peer.close()

    origin.setblocking(True)
    try:
        run(driven=True)
        run(driven=False)
    finally:
        origin.close()
    (errors, driving), (task_errors, in_task) = seen
    assert driving is True and in_task is False
    assert errors == [f"127.0.0.1:{refused_port}: Connection refused"]
    assert len(task_errors) == 1 and task_errors[0].startswith(f"127.0.0.1:{refused_port}: ")


def test_trio_still_keeps_a_tasks_cancel_status_where_the_opener_reads_it():
    """The opener tells a wait under an open cancel scope by ``Task._cancel_status`` (trio's
    private attribute): if trio renames it, this fails loudly rather than every connection
    failing at the edge's start."""

    async def main() -> None:
        task = trio.lowlevel.current_task()
        base = task._cancel_status
        with trio.CancelScope():
            assert task._cancel_status is not base
        assert task._cancel_status is base

    trio.run(main)


def test_a_wait_on_a_closed_socket_raises_where_it_waited():
    seen: list[type[BaseException]] = []

    async def serve(sock: trio.socket.SocketType, addr: Any) -> None:
        with sock:
            a, b = socket.socketpair()
            fd = a.fileno()
            a.close()
            b.close()

            class Gone:
                def fileno(self) -> int:
                    return fd

            try:
                await op_mod.wait_readable(Gone())
            except OSError as exc:
                seen.append(type(exc))
            _write(sock, b"ok")

    async def body(opener: Opener, port: int) -> None:
        c = await _connect(port)
        assert await _recv_all(c) == b"ok"
        c.close()

    opener = _run(serve, body)
    assert seen and issubclass(seen[0], OSError)
    assert opener.donated == 0


def test_a_gate_parks_a_driven_coroutine_without_a_task_and_a_task_on_an_event():
    """edge.opener.Gate (what Edge.wait_positioned waits on): a connection the opener runs
    parks on it with the opener (no donation) and runs again when it is set; a task waits on a
    trio event; a set gate does not wait at all."""
    gate = op_mod.Gate()
    order: list[str] = []

    async def driven(tag: str) -> None:
        await gate.wait()
        order.append(tag)

    async def body(opener: Opener, port: int) -> None:
        async with trio.open_nursery() as nursery:
            opener.start_soon(driven, "driven")
            nursery.start_soon(driven, "task")
            await trio.testing.wait_all_tasks_blocked()
            assert order == [] and len(gate._parked) == 1
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
        assert sorted(order) == ["driven", "task"]
        opener.start_soon(driven, "after")  # already set: straight through
        await trio.testing.wait_all_tasks_blocked()
        assert order[-1] == "after"

    opener = _run(lambda s, a: None, body)
    assert opener.donated == 0


def test_a_coroutine_parked_on_a_gate_when_the_opener_stops_ends_as_a_cancelled_task():
    gate = op_mod.Gate()
    ended: list[str] = []

    async def driven() -> None:
        try:
            await gate.wait()
            ended.append("went on")
        except trio.Cancelled:
            ended.append("cancelled")
            raise

    async def body(opener: Opener, port: int) -> None:
        opener.start_soon(driven)
        await trio.testing.wait_all_tasks_blocked()
        assert len(gate._parked) == 1

    _run(lambda s, a: None, body)  # the nursery is cancelled with the coroutine on the gate
    assert ended == ["cancelled"]
    assert gate._parked == []


def test_a_second_wait_on_the_same_fd_is_refused_as_trio_refuses_it():
    mine, theirs = _origin_pair()
    seen: list[str] = []

    async def first() -> None:
        await op_mod.wait_readable(mine)
        seen.append("first woke")

    async def second() -> None:
        try:
            await op_mod.wait_readable(mine)
        except trio.BusyResourceError:
            seen.append("second refused")

    async def body(opener: Opener, port: int) -> None:
        opener.start_soon(first)
        opener.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["second refused"]
        theirs.send(b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["second refused", "first woke"]

    opener = _run(lambda s, a: None, body)
    assert opener.donated == 0
    mine.close()
    theirs.close()


def _corking(ran: list[str], tag: str, cork: bool = True, scope: bool = False):
    async def step() -> None:
        ran.append(f"{tag}:before")
        if cork:
            await op_mod.cork()
        ran.append(f"{tag}:after")

    async def run() -> None:
        if scope:  # a scope of its own stays open over the cork
            with trio.CancelScope():
                await step()
        else:
            await step()

    return run


def _start_all(opener: Opener, runs: list[Any]) -> None:
    for run in runs:
        opener.start_soon(run, name="client")


def test_corked_coroutines_go_on_once_no_other_is_ready():
    ran: list[str] = []

    async def body(opener: Opener, port: int) -> None:
        await trio.testing.wait_all_tasks_blocked()
        _start_all(opener, [_corking(ran, t) for t in "abc"])  # queued together (one poke)
        await trio.testing.wait_all_tasks_blocked()

    opener = _run(lambda s, a: None, body)
    # every write before a cork leaves together after the others' steps: one wake-up a peer
    assert ran == ["a:before", "b:before", "c:before", "a:after", "b:after", "c:after"]
    assert opener.donated == 0


def test_no_corked_coroutine_waits_for_more_than_cork_max_others(monkeypatch):
    monkeypatch.setattr(op_mod, "CORK_MAX", 2)
    ran: list[str] = []

    async def body(opener: Opener, port: int) -> None:
        await trio.testing.wait_all_tasks_blocked()
        _start_all(opener, [_corking(ran, t) for t in "abcd"])
        await trio.testing.wait_all_tasks_blocked()

    _run(lambda s, a: None, body)
    assert ran == [
        *("a:before", "b:before", "c:before"),  # the third corked one takes the lot along
        *("a:after", "b:after", "c:after"),
        *("d:before", "d:after"),
    ]


def test_a_cork_under_an_open_cancel_scope_goes_on_at_once():
    ran: list[str] = []

    async def body(opener: Opener, port: int) -> None:
        await trio.testing.wait_all_tasks_blocked()
        _start_all(opener, [_corking(ran, "a", scope=True), _corking(ran, "b", cork=False)])
        await trio.testing.wait_all_tasks_blocked()

    opener = _run(lambda s, a: None, body)
    # no other coroutine may run under a's scope (it is the opener task's while open)
    assert ran == ["a:before", "a:after", "b:before", "b:after"]
    assert opener.donated == 0


def test_a_cork_outside_an_opener_is_nothing():
    ran: list[str] = []

    async def main() -> None:
        await _corking(ran, "t")()

    trio.run(main)
    assert ran == ["t:before", "t:after"]


def test_a_first_wait_marked_new_is_added_and_again_on_a_registered_fd_still_waits():
    mine, theirs = _origin_pair()

    async def serve(sock: trio.socket.SocketType, addr: Any) -> None:
        with sock:
            await op_mod.wait_readable(mine, new=True)  # a fresh fd: added to the epoll
            first = mine.recv(100)
            await op_mod.wait_readable(mine, new=True)  # in the epoll already: modified
            _write(sock, first + mine.recv(100))

    async def body(opener: Opener, port: int) -> None:
        c = await _connect(port)
        await trio.testing.wait_all_tasks_blocked()
        theirs.send(b"a")
        await trio.testing.wait_all_tasks_blocked()
        theirs.send(b"b")
        assert await _recv_all(c) == b"ab"
        c.close()

    opener = _run(serve, body)
    assert opener.statistics() == (1, 0)
    mine.close()
    theirs.close()
