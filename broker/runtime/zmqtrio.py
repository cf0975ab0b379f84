"""The one ZeroMQ/trio bridge, used by the broker (every socket) and the edges (the broker link).

ZeroMQ under trio (DESIGN.md, "trio and ZeroMQ"), the rules this module exists to keep in one
place:

* ``sock.FD`` is edge-triggered: it signals "something changed", not "readable".  So a reader
  drains with ``NOBLOCK`` until ``zmq.Again`` and parks on ``trio.lowlevel.wait_readable(FD)``
  only after ``EVENTS`` says nothing is readable (reading ``EVENTS`` also re-arms the edge).
* One reader task per socket, which checkpoints once per batch, never per message (per message
  capped at ~100,000 msg/s and made PUB drop; batched, trio receives ~1.6 million msg/s).
* Any send or (un)subscribe on the socket may consume the edge the parked reader waits for, so
  every one of them wakes (``poke``) the parked reader, which re-checks ``EVENTS``.  The wake-up
  is ``trio.lowlevel.notify_closing(FD)``, which the parked ``wait_readable`` sees as a
  ``ClosedResourceError`` (the socket is not closed: ``close`` sets ``closing`` first), not a
  cancel scope per wait: at low rates every message parks the reader once, and a scope's
  enter and exit were a few % of an edge's CPU per message (edge.readtimer wakes idle client
  sockets the same way).
* The reader checkpoints after a batch only when more is already readable; otherwise its park
  is the checkpoint (one scheduling round per message at low rates, not two).

``ZSocket`` wraps one ``zmq.Socket``; ``serve`` is the read loop.  ``open_zsocket`` builds a
socket from the wiring table (``broker.config.WIRING``): type, options, bind or connect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import trio
import zmq

import _speedups
from broker.config import Config, Endpoint

T = TypeVar("T")

# as plain ints: pyzmq's enums cost three Python calls at each ``&`` (``readable`` runs at
# every publish's poke)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
BATCH_MAX = 1000  # messages drained from a socket before handing them over


class ZSocket:
    """A non-blocking ZeroMQ socket read by one trio task (see the module docstring)."""

    __slots__ = ("sock", "name", "fd", "_parked", "closing", "send_dropped", "linger_ms")

    def __init__(self, sock: zmq.Socket[bytes], name: str) -> None:
        self.sock = sock
        self.name = name
        self.fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]  # pyzmq: get() -> int | bytes; FD is an int
        self._parked = False  # the reader waits on the FD (poke wakes it)
        self.closing = False
        self.send_dropped = 0  # sends refused because the socket would block
        self.linger_ms = 0  # on close (the broker's graceful stop gives its fan-out some)

    # -- receiving (never blocks) ----------------------------------------------------------------

    def recv_batch(self, limit: int = BATCH_MAX) -> list[list[bytes]]:
        """Up to ``limit`` multipart messages that are ready now (maybe none)."""
        out: list[list[bytes]] = []
        recv = self.sock.recv_multipart
        try:
            while len(out) < limit:
                out.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        return out

    def recv_frames(self, limit: int = BATCH_MAX) -> list[bytes]:
        """Up to ``limit`` single-frame messages that are ready now (one frame per message is
        3 to 4x faster to receive than multipart: the edges' SUB and DEALER use it), read by
        ``_speedups.recv_frames``."""
        return _speedups.recv_frames(self.sock, limit)  # no zmq.Again raised (compiled twin)

    def recv_single(self, limit: int = BATCH_MAX) -> tuple[list[bytes], int]:
        """Up to ``limit`` messages ready now: the single-frame ones as bytes, and how many of
        more than one frame were read and left out (``_speedups.recv_single``: the broker's
        PULL input, one frame per message as Pushpin's)."""
        return _speedups.recv_single(self.sock, limit)

    # -- sending (never blocks; wakes the parked reader) -----------------------------------------

    def send(self, frames: Sequence[bytes]) -> bool:
        """Send a multipart message without blocking; False (and counted) if it would block."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.send_dropped += 1
            return False
        finally:
            self.poke()

    def send_frame(self, frame: bytes) -> bool:
        """Send one frame without blocking; False (and counted) if it would block."""
        try:
            self.sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.send_dropped += 1
            return False
        finally:
            self.poke()

    def subscribe(self, topic: bytes) -> None:
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.poke()

    def unsubscribe(self, topic: bytes) -> None:
        self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)
        self.poke()

    def poke(self) -> None:
        """Wake this socket's parked reader so it re-checks EVENTS.  Call it after using
        ``sock`` directly (a Cython fan-out loop sends on it: one poke per batch).

        Only when a message is ready: reading ``EVENTS`` here re-arms the FD's edge, so a
        message that comes later wakes the parked reader through the FD as usual (a publish
        no longer wakes the fan-out socket's reader just to find nothing)."""
        if self._parked and self.readable():
            self._parked = False
            trio.lowlevel.notify_closing(self.fd)

    # -- waiting and the read loop ---------------------------------------------------------------

    def readable(self) -> bool:
        """A message is ready now (reading ``EVENTS`` also re-arms the FD's edge)."""
        return bool(self.sock.getsockopt(_EVENTS) & _POLLIN)  # type: ignore[operator]  # pyzmq: get() -> int | bytes; EVENTS is an int

    async def wait_readable(self) -> None:
        """Return when a message is ready; parks on the FD only while EVENTS says none is."""
        while not self.readable():
            await self._park()

    async def _park(self) -> None:
        """Wait for the FD's edge or a ``poke``; a closed socket raises ``ClosedResourceError``."""
        self._parked = True
        try:
            await trio.lowlevel.wait_readable(self.fd)
        except trio.ClosedResourceError:
            if self.closing:
                raise  # (else: a poke; the caller re-checks EVENTS)
        finally:
            self._parked = False

    async def serve(
        self, drain: Callable[[], list[T]], handle: Callable[[list[T]], Awaitable[object]]
    ) -> NoReturn:
        """The read loop: wait until readable, ``batch = drain()`` (non-blocking, e.g.
        ``recv_batch`` or a parser over it; may return nothing when all it read was refused),
        ``await handle(batch)`` if there is one; then a checkpoint when more is readable
        already (other tasks get their turn between batches), else the park is the one."""
        ready = self.readable()
        while True:
            while not ready:
                await self._park()
                ready = self.readable()
            batch = drain()
            if batch:
                await handle(batch)
            ready = self.readable()
            if ready:
                await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.closing = True
        try:
            trio.lowlevel.notify_closing(self.fd)
        except RuntimeError:  # outside trio
            pass
        self.sock.close(linger=self.linger_ms)


def set_options(sock: zmq.Socket[bytes], options: Mapping[str, Any]) -> None:
    """Set socket options given by zmq constant name (``{"SNDHWM": 0}``)."""
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)


def open_zsocket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    ep: Endpoint,
    cfg: Config,
    address: str,
    extra: Mapping[str, Any] | None = None,
) -> ZSocket:
    """A socket for wiring-table entry ``ep``: its type, ``LINGER 0``, its options (values that
    name a config key are read from ``cfg``), ``extra`` (heartbeats, Curve), then bound to or
    connected to ``address`` as the entry says."""
    sock = ctx.socket(getattr(zmq, ep.kind))
    try:
        sock.setsockopt(zmq.LINGER, 0)
        set_options(sock, ep.options_for(cfg))
        if extra:
            set_options(sock, extra)
        if ep.bind:
            sock.bind(address)
        else:
            sock.connect(address)
    except BaseException:
        sock.close(linger=0)
        raise
    return ZSocket(sock, ep.name)
