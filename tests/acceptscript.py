"""What every accept loop must do with ``accept()`` errors, for ``broker.runtime.rawsock``'s
loop and the edge's opener alike: a listening socket whose first ``accept`` calls fail as
scripted, and the three checks (a connection that failed is skipped; running out of
descriptors pauses ``ACCEPT_PAUSE_S`` and logs; anything else ends the loop)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from broker.runtime.rawsock import ACCEPT_PAUSE_S

# run(errors, clients, clock) -> (connections accepted, trio time it took to accept clients)
Runner = Callable[[list[int], int, Any], tuple[int, float]]


class ScriptedListener:
    """A listening socket whose first ``accept`` calls raise the scripted errors."""

    def __init__(self, sock: socket.socket, errors: list[int]) -> None:
        self.sock = sock
        self.errors = list(errors)
        self.calls = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
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


def run_accepting(
    start: Callable[[trio.Nursery], None], got: list[Any], clients: int, clock: Any
) -> float:
    """Run the accept loop ``start(nursery)`` starts until ``got`` holds ``clients``
    connections (at most 5 s); the trio time that took."""
    took: list[float] = []

    async def main() -> None:
        t0 = trio.current_time()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                start(nursery)
                while len(got) < clients:
                    await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
        took.append(trio.current_time() - t0)

    trio.run(main, clock=clock)
    return took[0]


def check_skips_a_failed_connection(run: Runner) -> None:
    n, took = run([errno.ECONNABORTED, errno.EPROTO], 2, None)
    assert n == 2
    assert took < ACCEPT_PAUSE_S  # no pause for those


def check_pauses_when_out_of_descriptors(run: Runner, caplog: Any, what: str) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    with caplog.at_level("WARNING", logger="broker.runtime.rawsock"):
        n, took = run([errno.EMFILE], 1, clock)
    assert n == 1
    assert took >= ACCEPT_PAUSE_S
    assert f"{what}: accept failed" in caplog.text and "pausing" in caplog.text


def check_ends_on_other_errors(run: Runner) -> None:
    with pytest.raises(BaseException) as info:
        run([errno.EBADF], 1, None)
    exc = info.value
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF
