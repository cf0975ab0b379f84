"""Held client sessions: what the hub maps channels to and the delivery path writes to.

A ``StreamSession`` is an HTTP stream hold.  Its connection task owns the socket (it watches
for the client going away); the delivery path writes to the socket's fd directly.  While
``writing`` is set (the connection task is sending the initial response, or a writer task is
draining a backlog) deliveries go to ``buf`` instead, so bytes never interleave.

A ``ResponseSession`` is a long-poll (response hold): it waits for one published response or
its timeout; the first ``respond()`` wins and wakes the connection task.

Both follow the lifecycle of ``edge.sessionstate`` (OPEN, CLOSING, DONE, DEAD) and implement
its ``Session`` interface.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from edge.grip.instruct import Channel, Hold
from edge.http1 import responses
from edge.sessionstate import CLOSE, DEAD, DONE, FLUSHED, KILL, OPEN, HistoryLost, Session

if TYPE_CHECKING:
    import trio

    from edge.grip.holds import HeldStream
    from edge.grip.nextlink_track import PrevIds
    from edge.readtimer import Waker
    from edge.tlsconn import TlsConn

_ids = itertools.count(1)
_LAST_CHUNK = b"0\r\n\r\n"


# held sessions of the same instruct share one (never mutated) filters map and channel set:
# a frozenset of one name is 216 bytes, kept by every held connection otherwise
_NO_FILTERS: dict[str, tuple[str, ...]] = {}
_NAMES: dict[tuple[str, ...], frozenset[str]] = {}
_NAMES_MAX = 4096  # distinct channel sets remembered (cleared when full: sharing, not a leak)


# ... and what one hold's channels give every session it holds (a hold is shared:
# edge.grip.cache), by ``id(hold.channels)`` with that tuple kept and compared (an id is reused
# once its object is gone); the tuple, not the hold: a hold may carry a large initial body
_BY_HOLD: dict[int, tuple[tuple[Channel, ...], dict[str, tuple[str, ...]], frozenset[str]]] = {}


def _subscription(session: StreamSession | ResponseSession, hold: Hold) -> None:
    """Per-channel filters (``edge.grip.filters``) and the subscription meta from the hold."""
    session.meta = hold.meta
    chans = hold.channels
    known = _BY_HOLD.get(id(chans))
    if known is not None and known[0] is chans:
        session.filters, session.channel_names = known[1], known[2]
        return
    if any(c.filters for c in chans):
        filters = {c.name: c.filters for c in chans if c.filters}
    else:
        filters = _NO_FILTERS
    key = tuple(c.name for c in chans)
    names = _NAMES.get(key)
    if names is None:
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        names = _NAMES[key] = frozenset(key)
    if len(_BY_HOLD) >= _NAMES_MAX:
        _BY_HOLD.clear()
    _BY_HOLD[id(chans)] = (chans, filters, names)
    session.filters, session.channel_names = filters, names


class StreamSession(Session):
    kind = "stream"
    # what one delivery reads and writes (track, filters, cursors, chunked, crypt,
    # writing, buf, fd, sent, last_out) are _speedups.SessionCore's fields
    __slots__ = (
        "id",
        "sock",
        "hold",
        "scope",
        "meta",
        "channel_names",
        "hinted",
        "update_key",
        "debug",
    )

    def __init__(
        self,
        sock: trio.socket.SocketType,
        hold: Hold,
        chunked: bool,
        now: float,
        crypt: TlsConn | None = None,
    ) -> None:
        super().__init__()
        self.id = next(_ids)
        self.sock = sock
        self.fd = sock.fileno()
        self.crypt = crypt  # a TLS client's state (edge.tlsconn): the delivery path encrypts
        self.hold = hold
        self.chunked = chunked
        self.buf = bytearray()
        self.writing = True  # the connection task sends the initial response first
        # the connection task's wait; while parked (edge.parking) its HeldStream
        self.scope: trio.CancelScope | Waker | HeldStream | None = None
        self.last_out = now
        self.sent = 0  # bytes the delivery path wrote (the access log's count)
        _subscription(self, hold)
        self.hinted = False  # fetch the next link now (a "hint", or the update limiter's turn)
        # prev-id checks and the queue of an update under way (edge.grip.nextlink_track); None
        # in the common case (no prev-id, no update): the delivery path's fast path
        self.track: PrevIds | None = None
        # the update limiter's key (the next link's URL), None while the hold has no next link
        self.update_key: str | None = None
        self.debug = False  # the route's ``debug``: filter errors are told to the client

    def hint(self) -> None:
        """Ask the connection task to fetch the next link (no-op without one)."""
        if self.hold.next_link and self.state < DONE:
            self.hinted = True
            if self.scope is not None:
                self.scope.cancel()

    def on_gap(self) -> None:
        """The delivery path saw a prev-id gap (``track.gap``): wake the connection task,
        which asks the update limiter for its turn."""
        if self.scope is not None and self.state < DONE:
            self.scope.cancel()

    def close(self) -> bytes:
        """A published ``close`` (or a shutdown): the bytes that end the response (the final
        chunk; nothing for HTTP/1.0, whose connection close ends it).  Only when OPEN."""
        self._on(CLOSE)
        return _LAST_CHUNK if self.chunked else b""

    def finish(self) -> None:
        """The queued close was fully written: the hold ended normally."""
        self._on(FLUSHED)
        if self.scope is not None:
            self.scope.cancel()

    def kill(self, reason: str) -> None:
        """Drop the connection (write error, buffer overflow)."""
        if self._on(KILL) is not DEAD:
            self.reason = reason
        if self.scope is not None:
            self.scope.cancel()

    def end_for_shutdown(self) -> tuple[StreamSession, list[bytes]] | None:
        if self.state is not OPEN:
            return None
        return self, [self.close()]

    def on_history_lost(self, channel: str) -> HistoryLost:
        # closed without its final chunk: the client reconnects, the origin decides
        if self.state >= DONE:
            return HistoryLost.NOTHING
        self.kill(f"history lost on channel {channel} (epoch changed)")
        return HistoryLost.CLOSED

    def cut_off(self, reason: str) -> None:
        if self.state < DONE:
            self.kill(f"resume: {reason}")

    def __repr__(self) -> str:
        return f"<StreamSession conn={self.id} fd={self.fd} {self.state.name}>"


class ResponseSession(Session):
    """A long-poll: ``CLOSING`` once answered (``result`` set), ``DONE`` once the connection
    task stopped waiting (answered or client gone)."""

    kind = "response"
    __slots__ = (
        "id",
        "hold",
        "keep_alive",
        "deadline",
        "result",
        "scope",
        "meta",
        "channel_names",
        "retry",
        "update_key",
        "debug",
    )

    def __init__(self, hold: Hold, keep_alive: bool, deadline: float) -> None:
        super().__init__()
        self.id = next(_ids)
        self.hold = hold
        self.keep_alive = keep_alive
        self.deadline = deadline
        self.result: bytes | None = None
        self.scope: trio.CancelScope | None = None
        _subscription(self, hold)
        self.retry = False  # re-request the origin now (a "hint", or the update limiter's turn)
        self.track: PrevIds | None = None  # prev-id checks (edge.grip.nextlink_track)
        self.update_key: str | None = ""  # the update limiter's key: long-polls share ""
        self.debug = False  # the route's ``debug``: filter errors are told to the client

    def hint(self) -> None:
        """Ask the connection task to re-request the origin (unless already answered)."""
        if self.state is OPEN:
            self.retry = True
            if self.scope is not None:
                self.scope.cancel()

    def on_gap(self) -> None:
        """The delivery path saw a prev-id gap: wake the connection task (which asks the
        update limiter for its turn to re-request the origin)."""
        if self.state is OPEN and self.scope is not None:
            self.scope.cancel()

    def respond(self, data: bytes) -> None:
        """Answer the poll with ``data``; the first answer wins (later ones are ignored)."""
        if self.state is OPEN:
            self.result = data
            self._on(CLOSE)
            if self.scope is not None:
                self.scope.cancel()

    def timeout(self) -> None:
        """Its timeout passed (or its history was lost): answer with the timeout response."""
        if self.state is OPEN:
            self.respond(responses.timeout(self.hold, keep_alive=self.keep_alive))

    def gone(self) -> bool:
        return self.state is not OPEN  # a poll takes one answer

    def end_for_shutdown(self) -> None:
        if self.state is OPEN:
            self.respond(responses.timeout(self.hold, keep_alive=False))
        return None

    def on_history_lost(self, channel: str) -> HistoryLost:
        # answered now as if its timeout passed: the client polls again, the origin decides
        if self.state is not OPEN:
            return HistoryLost.NOTHING
        self.timeout()
        return HistoryLost.ANSWERED

    def cut_off(self, reason: str) -> None:
        self.timeout()

    def __repr__(self) -> str:
        return f"<ResponseSession conn={self.id} {self.state.name}>"
