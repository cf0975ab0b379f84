"""Keep-alive connections from the edge to origins: idle connections parked per target.

Opening a TCP connection per origin request (connect, a TIME_WAIT socket, the origin's accept)
was the largest cost of a new client connection through the proxy after the client's own
socket.  ``edge.origin.client`` now asks this pool first: a response that was read to its end,
on a connection neither side asked to close, parks its socket here, and the next request to the
same target takes it.

* One ``OriginPool`` per edge, owned by its ``OriginClient`` (``Edge.origin_client.pool``),
  keyed by ``OriginClient.pool_key``: ``(host, port)``, plus the TLS name and profile for a TLS
  connection (``trio.SSLStream``; its TCP socket is what is peeked and closed here); at most ``MAX_IDLE_PER_TARGET`` idle connections per target (the
  most recently parked are reused first, so the rest age out), each for at most ``idle_s``
  seconds (``origin_keepalive_idle_s``, changed on SIGHUP with ``set_idle_s``; 0 turns pooling
  off: one connection per request with ``Connection: close``, as before).
* An idle connection the origin closed (or wrote to: there is no request outstanding) reads
  as readable; ``take`` checks that with a ``poll()`` of no timeout and drops such a connection.
  The origin can still close between that check and our request: ``edge.origin.client``
  retries a request once on a fresh connection when a reused one ends before any response byte.
"""

from __future__ import annotations

import math
import select
from dataclasses import dataclass

import trio

MAX_IDLE_PER_TARGET = 256
DEFAULT_IDLE_S = 30.0

Key = tuple[object, ...]  # (host, port), + TLS name and profile (OriginClient.pool_key)
Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


@dataclass(frozen=True, slots=True)
class OriginPoolStatistics:
    idle_s: float
    targets: int
    idle: int  # parked connections


# one poll set, reused: ``_dead`` registers a single descriptor, asks, and takes it out again
_POLL = select.poll()


def _socket(stream: Stream) -> trio.socket.SocketType:
    if type(stream) is not _SOCKET_STREAM and isinstance(stream, trio.SSLStream):
        return stream.transport_stream.socket
    return stream.socket


_SOCKET_STREAM = trio.SocketStream


def _dead(stream: Stream) -> bool:
    """True if an idle connection has anything to read (EOF, reset or stray bytes), or is
    closed.

    One ``poll()`` of its descriptor with no timeout: ``select()`` cannot take a descriptor
    above 1023 (an edge holding thousands of clients has those), which made every such pooled
    connection look dead and a new one be opened per request; a ``recv(MSG_PEEK)`` answers the
    same but raises on the usual answer (nothing there), three times the cost.  Over TLS, any
    bytes (an alert, a late session ticket) also make it look dead: a new connection is the
    safe answer."""
    fd = _socket(stream).fileno()
    if fd < 0:
        return True
    poll = _POLL
    poll.register(fd, select.POLLIN)
    try:
        return bool(poll.poll(0))  # POLLIN, POLLHUP, POLLERR (POLLNVAL: not open)
    finally:
        poll.unregister(fd)


def close_stream(stream: Stream) -> None:
    """Close ``stream``'s socket at once (no checkpoint: also from a cancelled task; over TLS
    without ``close_notify``)."""
    try:
        _socket(stream).close()
    except OSError:
        pass


class OriginPool:
    """Idle keep-alive connections to origins, per ``(host, port)`` (see the docstring).

    ``keep_alive`` is a plain attribute (read per origin request by ``build_request``)."""

    __slots__ = ("idle_s", "keep_alive", "_idle")

    def __init__(self, idle_s: float = DEFAULT_IDLE_S) -> None:
        self.idle_s = DEFAULT_IDLE_S
        self.keep_alive = True  # idle_s > 0: connections are parked, not closed
        self._idle: dict[Key, list[tuple[Stream, float]]] = {}
        self.set_idle_s(idle_s)

    def set_idle_s(self, idle_s: float) -> None:
        """Set the idle lifetime of parked connections (0: no pooling); startup and SIGHUP.
        Connections parked longer than the new lifetime go at the next ``take`` or ``sweep``."""
        self.idle_s = max(0.0, float(idle_s))
        self.keep_alive = self.idle_s > 0

    def take(self, key: Key, now: float) -> Stream | None:
        """An idle, live connection to ``key`` (``(host, port)``), or None."""
        idle = self._idle.get(key)
        limit = self.idle_s
        while idle:
            stream, parked = idle.pop()
            if now - parked <= limit and not _dead(stream):
                return stream
            close_stream(stream)
        return None

    def give(self, key: Key, stream: Stream, now: float) -> None:
        """Park ``stream`` (its last response fully read) for reuse."""
        if not self.keep_alive:
            close_stream(stream)
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= MAX_IDLE_PER_TARGET:
            close_stream(idle.pop(0)[0])
        idle.append((stream, now))

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def sweep(self, now: float) -> int:
        """Close idle connections past their lifetime (call about once a second); how many."""
        pools = self._idle
        limit = self.idle_s
        n = 0
        for key in list(pools):
            idle = pools[key]
            keep = [(s, t) for s, t in idle if now - t <= limit]
            for s, t in idle:
                if now - t > limit:
                    close_stream(s)
                    n += 1
            if keep:
                pools[key] = keep
            else:
                del pools[key]
        return n

    def close(self) -> int:
        """Close every parked connection (the edge stops, or a test ends); how many."""
        return self.sweep(math.inf)

    def statistics(self) -> OriginPoolStatistics:
        return OriginPoolStatistics(self.idle_s, len(self._idle), self.idle_count())
