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

from edge.grip import Hold

_ids = itertools.count(1)


class StreamSession:
    kind = "stream"
    __slots__ = ("id", "fd", "sock", "chunked", "hold", "buf", "writing", "closing", "dead",
                 "done", "reason", "scope", "last_out", "__weakref__")

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
                 "__weakref__")

    def __init__(self, hold: Hold, keep_alive: bool, deadline: float) -> None:
        self.id = next(_ids)
        self.hold = hold
        self.keep_alive = keep_alive
        self.deadline = deadline
        self.result: bytes | None = None
        self.scope = None
        self.done = False  # the connection task stopped waiting (answered or client gone)

    def respond(self, data: bytes) -> None:
        if self.result is None:
            self.result = data
            if self.scope is not None:
                self.scope.cancel()

    def __repr__(self) -> str:
        return f"<ResponseSession conn={self.id}>"
