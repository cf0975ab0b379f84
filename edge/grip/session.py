"""Held client sessions: what the hub maps channels to and the delivery path writes to.

A ``StreamSession`` is an HTTP stream hold.  Its connection task owns the socket (it watches
for the client going away); the delivery path writes to the socket's fd directly.  While
``writing`` is set (the connection task is sending the initial response, or a writer task is
draining a backlog) deliveries go to ``buf`` instead, so bytes never interleave.

A ``ResponseSession`` is a long-poll (response hold): it waits for one published response or
its timeout; the first ``respond()`` wins and wakes the connection task.
"""
from __future__ import annotations

import itertools

from edge.grip.instruct import Hold

_ids = itertools.count(1)


def _subscription(session, hold: Hold) -> None:
    """Per-channel filters (``edge.filters``) and the subscription meta from the hold."""
    session.filters = {c.name: c.filters for c in hold.channels if c.filters}
    session.meta = hold.meta
    session.channel_names = frozenset(c.name for c in hold.channels)


class StreamSession:
    kind = "stream"
    __slots__ = ("id", "fd", "sock", "chunked", "hold", "buf", "writing", "closing", "dead",
                 "done", "reason", "scope", "last_out", "filters", "meta", "channel_names",
                 "last_cursor", "hinted", "__weakref__")

    def __init__(self, sock, hold: Hold, chunked: bool, now: float) -> None:
        self.id = next(_ids)
        self.sock = sock
        self.fd = sock.fileno()
        self.hold = hold
        self.chunked = chunked
        self.buf = bytearray()
        self.writing = True  # the connection task sends the initial response first
        self.closing = False  # a published "close": end after the buffered bytes
        self.dead = False  # the connection must be dropped (error, overflow)
        self.done = False  # the hold is over (closing flushed, or dead)
        self.reason = ""
        self.scope = None  # the connection task's CancelScope while it waits
        self.last_out = now
        _subscription(self, hold)
        self.last_cursor: dict[str, str] = {}  # channel -> cursor of the last delivered message
        self.hinted = False  # a published "hint" (or recover): fetch the next link

    def hint(self) -> None:
        """Ask the connection task to fetch the next link (no-op without one)."""
        if self.hold.next_link and not self.done:
            self.hinted = True
            if self.scope is not None:
                self.scope.cancel()

    def finish(self) -> None:
        """End the hold normally (after a published close was fully written)."""
        self.done = True
        if self.scope is not None:
            self.scope.cancel()

    def kill(self, reason: str) -> None:
        """Drop the connection (write error, buffer overflow)."""
        if not self.dead:
            self.dead = True
            self.reason = reason
        self.finish()

    def __repr__(self) -> str:
        return f"<StreamSession conn={self.id} fd={self.fd}>"


class ResponseSession:
    kind = "response"
    __slots__ = ("id", "hold", "keep_alive", "deadline", "result", "scope", "done",
                 "filters", "meta", "channel_names", "retry", "__weakref__")

    def __init__(self, hold: Hold, keep_alive: bool, deadline: float) -> None:
        self.id = next(_ids)
        self.hold = hold
        self.keep_alive = keep_alive
        self.deadline = deadline
        self.result: bytes | None = None
        self.scope = None
        self.done = False  # the connection task stopped waiting (answered or client gone)
        _subscription(self, hold)
        self.retry = False  # a published "hint" (or recover): re-request the origin

    def hint(self) -> None:
        """Ask the connection task to re-request the origin (unless already answered)."""
        if self.result is None and not self.done:
            self.retry = True
            if self.scope is not None:
                self.scope.cancel()

    def respond(self, data: bytes) -> None:
        if self.result is None:
            self.result = data
            if self.scope is not None:
                self.scope.cancel()

    def __repr__(self) -> str:
        return f"<ResponseSession conn={self.id}>"
