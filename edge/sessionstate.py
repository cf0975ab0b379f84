"""The held-session state machine shared by response holds, stream holds and WebSocket sessions.

Theory of operation
-------------------
A held session is what the hub maps channels to and the delivery path writes to.  There are
three kinds (``edge.grip.session.ResponseSession``: a long-poll; ``edge.grip.session.StreamSession``: an
HTTP stream; ``edge.ws.session.WsSession``: a WebSocket), and one lifecycle for all of them::

    OPEN --CLOSE--> CLOSING --FLUSHED--> DONE
      |                |                   |
      +------END-------+-------END---------+--> DONE      (the connection task stopped)
      +------KILL------+-------KILL--------+--> DEAD      (the connection is dropped)

* ``OPEN``: published messages are delivered.
* ``CLOSING``: the session's last output is queued: a published ``close`` (stream: the final
  chunk; WebSocket: our close frame), a shutdown's close, or a long-poll's one answer.  Nothing
  new is taken; what is queued still goes out.
* ``DONE``: ended; nothing more is written (the queued close was flushed, or the connection
  task stopped waiting).
* ``DEAD``: dropped (write error, buffer overflow, history lost): the socket is abandoned.

``TRANSITIONS`` is the whole table; an event with no entry for the current state is a bug in
the edge and raises ``LocalProtocolError``.  Idempotent events are listed as self-loops (``END``
and ``KILL`` may come from the delivery path and the connection task both).  The state is an
``IntEnum`` with ``OPEN == 0`` so the delivery hot path tests ``if s.state:`` (not open) and
``s.state >= DONE`` (nothing may be written), one attribute read each.

Which side effect an event has (cancelling the connection task's wait, building a timeout
response, queueing a close frame) is the session class's business: the interface is ``Session``
(the methods the hub, the deliverer, the timers, the link repair and the lifecycle call), and
code dispatches on type or method, never on a string kind or an attribute probe.  ``kind`` is a
label for metrics and stats only.

Socket ownership (``writing`` on stream and WebSocket sessions: the connection task is sending,
or a writer task drains a backlog, so deliveries go to the buffer) is orthogonal to this
lifecycle and stays a separate flag.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from _speedups import SessionCore
from broker.errors import LocalProtocolError

if TYPE_CHECKING:
    from edge.grip.session import StreamSession


class SessionState(enum.IntEnum):
    OPEN = 0
    CLOSING = 1
    DONE = 2
    DEAD = 3


class SessionEvent(enum.Enum):
    CLOSE = "close"  # the session's last output is queued (close, shutdown, a poll's answer)
    FLUSHED = "flushed"  # the queued close was fully written
    END = "end"  # the connection task stopped with the session
    KILL = "kill"  # drop the connection


OPEN, CLOSING, DONE, DEAD = (
    SessionState.OPEN,
    SessionState.CLOSING,
    SessionState.DONE,
    SessionState.DEAD,
)
CLOSE, FLUSHED, END, KILL = (
    SessionEvent.CLOSE,
    SessionEvent.FLUSHED,
    SessionEvent.END,
    SessionEvent.KILL,
)

TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (OPEN, CLOSE): CLOSING,
    (CLOSING, FLUSHED): DONE,
    (OPEN, END): DONE,
    (CLOSING, END): DONE,
    (DONE, END): DONE,
    (DEAD, END): DEAD,
    (OPEN, KILL): DEAD,
    (CLOSING, KILL): DEAD,
    (DONE, KILL): DEAD,
    (DEAD, KILL): DEAD,
}


def next_state(state: SessionState, event: SessionEvent) -> SessionState:
    """The state after ``event`` in ``state``; raises ``LocalProtocolError`` if illegal."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise LocalProtocolError(f"session event {event.name} in state {state.name}") from None


class Session(SessionCore, ABC):
    """What the hub, the deliverer, the timers, the link repair and the lifecycle call.

    Subclasses have ``__slots__`` and set ``id``, ``filters``, ``meta`` and ``channel_names``
    (read by ``edge.grip.filters`` on the hot path); ``state`` changes only through ``_on``.
    """

    # ``state`` and the other fields a delivery reads are ``_speedups.SessionCore``'s
    __slots__ = ("reason", "__weakref__")
    kind: ClassVar[str]  # a label for metrics and stats ("response", "stream", "ws")

    state: SessionState
    id: int
    filters: dict[str, tuple[str, ...]]
    meta: Mapping[str, str]
    channel_names: frozenset[str]

    def __init__(self) -> None:
        SessionCore.__init__(self)
        self.state = OPEN
        self.reason = ""  # why it was killed

    def _on(self, event: SessionEvent) -> SessionState:
        """Apply ``event`` (the table above); returns the previous state."""
        old = self.state
        self.state = next_state(old, event)
        return old

    # read-only views of the state, for code off the hot path
    @property
    def closing(self) -> bool:
        return self.state is CLOSING

    @property
    def done(self) -> bool:
        """Nothing more is written (ended or dropped)."""
        return self.state >= DONE

    @property
    def dead(self) -> bool:
        return self.state is DEAD

    def gone(self) -> bool:
        """Nothing more can be delivered to it (``edge.sync.resume`` stops catching it up)."""
        return self.state >= DONE

    def end(self) -> None:
        """The connection task stopped with this session (idempotent)."""
        self._on(END)

    @abstractmethod
    def hint(self) -> None:
        """A published ``hint`` or a ``recover``: refresh from the origin if that means anything."""

    @abstractmethod
    def end_for_shutdown(self) -> tuple[StreamSession, list[bytes]] | None:
        """The edge drains (``edge.ops.lifecycle``): end so that the client reconnects elsewhere.
        Returns ``(self, [bytes])`` to write through the deliverer, or None.  Idempotent."""

    @abstractmethod
    def on_history_lost(self, channel: str) -> HistoryLost:
        """The broker lost ``channel``'s history (``edge.sync.repair``): never continue silently."""

    @abstractmethod
    def cut_off(self, reason: str) -> None:
        """A catch-up cannot hand over without a gap (``edge.sync.resume``): end it so that the
        client resumes with its cursor."""


class HistoryLost(enum.Enum):
    """What ``Session.on_history_lost`` did (counted in the edge's log line)."""

    NOTHING = "nothing"  # already ended
    TOLD = "told"  # the session tells its client or origin itself (WebSocket)
    CLOSED = "closed"  # a stream closed without its final chunk: the client reconnects
    ANSWERED = "answered"  # a long-poll got its timeout response: the client polls again
