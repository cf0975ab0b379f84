"""Keep-alive connections from the edge to origins: idle connections parked per target.

Opening a TCP connection per origin request (connect, a TIME_WAIT socket, the origin's accept)
was the largest cost of a new client connection through the proxy after the client's own
socket.  ``edge.origin`` now asks this pool first: a response that was read to its end, on a
connection neither side asked to close, parks its socket here, and the next request to the
same target takes it.

* Per trio run (a ``RunVar``), keyed by ``(host, port)``; at most ``MAX_IDLE_PER_TARGET``
  idle connections per target (the most recently parked are reused first, so the rest age
  out), each for at most ``idle_s`` seconds (``origin_keepalive_idle_s``; 0 turns pooling
  off: one connection per request with ``Connection: close``, as before).
* An idle connection the origin closed (or wrote to: there is no request outstanding) reads
  as readable; ``take`` checks that with a zero-timeout poll and drops such a connection.
  The origin can still close between that check and our request: ``edge.origin`` retries a
  request once on a fresh connection when a reused one ends before any response byte.
"""
from __future__ import annotations

import select
import socket

import trio

from edge.fastpath import stdlib_socket

MAX_IDLE_PER_TARGET = 256
DEFAULT_IDLE_S = 30.0

_pools: trio.lowlevel.RunVar = trio.lowlevel.RunVar("gripcast_origin_pool")
_settings = {"idle_s": DEFAULT_IDLE_S}


def configure(idle_s: float) -> None:
    """Set the idle lifetime of pooled origin connections (0: no pooling)."""
    _settings["idle_s"] = max(0.0, float(idle_s))


def enabled() -> bool:
    return _settings["idle_s"] > 0


def _pool() -> dict:
    try:
        return _pools.get()
    except LookupError:
        pool: dict = {}
        _pools.set(pool)
        return pool


_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def _dead(stream) -> bool:
    """True if an idle connection has anything to read (EOF, reset or stray bytes).

    One non-blocking ``recv(MSG_PEEK)``: ``select()`` cannot take a descriptor above 1023
    (an edge holding thousands of clients has those), which made every such pooled
    connection look dead and a new one be opened per request."""
    raw = stdlib_socket(stream.socket)
    try:
        if raw is None:  # pragma: no cover - another trio
            p = select.poll()
            p.register(stream.socket.fileno(), select.POLLIN)
            return bool(p.poll(0))
        raw.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True
    return True  # EOF or bytes nobody asked for


def take(key: tuple, now: float):
    """An idle, live connection to ``key`` (``(host, port)``), or None."""
    idle = _pool().get(key)
    limit = _settings["idle_s"]
    while idle:
        stream, parked = idle.pop()
        if now - parked <= limit and not _dead(stream):
            return stream
        _close(stream)
    return None


def give(key: tuple, stream, now: float) -> None:
    """Park ``stream`` (its last response fully read) for reuse."""
    if not enabled():
        _close(stream)
        return
    idle = _pool().setdefault(key, [])
    if len(idle) >= MAX_IDLE_PER_TARGET:
        _close(idle.pop(0)[0])
    idle.append((stream, now))


def idle_count() -> int:
    try:
        return sum(len(v) for v in _pools.get().values())
    except LookupError:
        return 0


def _close(stream) -> None:
    try:
        stream.socket.close()
    except OSError:
        pass


def sweep(now: float) -> int:
    """Close idle connections past their lifetime (call about once a second); how many."""
    try:
        pools = _pools.get()
    except LookupError:
        return 0
    limit = _settings["idle_s"]
    n = 0
    for key in list(pools):
        idle = pools[key]
        keep = [(s, t) for s, t in idle if now - t <= limit]
        for s, t in idle:
            if now - t > limit:
                _close(s)
                n += 1
        if keep:
            pools[key] = keep
        else:
            del pools[key]
    return n
