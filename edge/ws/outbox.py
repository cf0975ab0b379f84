"""What a WebSocket-over-HTTP connection owes its origin (sans-IO; reference 4.3): the client's
messages not yet accepted, and the client's close.

Theory of operation
-------------------
Client messages (``TEXT``, ``BINARY``, ``PING``, ``PONG``) are queued whole.  ``offer()`` builds
the next request's body: the queued messages in order (only the first with ``one_event``, the
route target option: one event per request) followed by ``CLOSE`` once the client closed (with
``one_event``, only in a request of its own).  ``accept(offer, header)`` applies the origin's
answer: by default it took everything; ``Content-Bytes-Accepted: N`` (Pushpin 1.41) says it took
only the first N content bytes of the offer (message content, then the CLOSE event's content):

* whole messages inside N leave the queue; a message cut by N keeps its unaccepted rest (same
  type) and is offered again, as is everything after it.  The next requests carry
  ``Content-Bytes-Replayed: R``, R being how many of their leading content bytes were offered
  before; a request is only due again when there is something new (a message, or bytes past
  the replayed ones), a keep-alive or a refresh (Pushpin's ``needUpdate``);
* accepting more than was offered is an error, and so is accepting nothing of a request that
  left messages out (``one_event``: no progress is possible);
* a CLOSE counts as sent once all the content before it was accepted; then the close's own
  content must be accepted too (the origin may hold back data, not the close) or it is an
  error.

Deviation from Pushpin, on purpose: only offered messages can be accepted (Pushpin's removal
walks the queue and also drops an empty message queued while the request was in flight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.errors import RemoteProtocolError
from edge.ws.events import close_content, encode_event

_DECIMAL = re.compile(rb"-?[0-9]+")


class AcceptError(RemoteProtocolError):
    """The origin's ``Content-Bytes-Accepted`` cannot be applied: the connection fails (1011)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=502, close_code=1011)


@dataclass(slots=True)
class _Queued:  # not frozen: a partly accepted message keeps the rest of its content
    type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Offer:
    """One request's body and what it offered."""

    body: bytes
    messages: int  # queued messages in it
    content: int  # their content bytes
    close_content: int  # the CLOSE event's content bytes (0: none or a bare CLOSE)
    close: bool  # a CLOSE event is in it
    maxed: bool  # queued messages were left out (one_event)
    replayed: int  # leading content bytes offered before (Content-Bytes-Replayed; 0: none)


class Outbox:
    def __init__(self, one_event: bool = False) -> None:
        self.one_event = one_event
        # a list, not a deque: an idle session's empty deque is ~600 bytes (its first
        # block), an empty list 56; the queue is short (at most MAX_PENDING_BYTES of content)
        self._queue: list[_Queued] = []
        self.size = 0  # content bytes queued
        self._replay_messages = 0  # leading queued messages offered before
        self._replay_bytes = 0  # and their content bytes
        self._close: bytes | None = None  # CLOSE content once the client closed (b"": bare)
        self.close_sent = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, type_: str, content: bytes | None) -> None:
        data = content or b""
        self._queue.append(_Queued(type_, data))
        self.size += len(data)

    def close(self, code: int | None, reason: str) -> None:
        """The client closed: a CLOSE follows the queued messages."""
        if self._close is None:
            self._close = close_content(code, reason) or b""

    def clear(self) -> None:
        """Forget the queue (detach, DISCONNECT)."""
        self._queue.clear()
        self.size = self._replay_messages = self._replay_bytes = 0

    def due(self) -> bool:
        """Is a request due for what is queued (Pushpin's ``needUpdate``)?"""
        if self._queue:
            return len(self._queue) > self._replay_messages or self.size > self._replay_bytes
        return self._close is not None and not self.close_sent

    def offer(self) -> Offer:
        """The next request's body (queued messages, then the CLOSE when due)."""
        limit = 1 if self.one_event else len(self._queue)
        parts = []
        content = 0
        n = 0
        for m in self._queue:
            if n == limit:
                break
            empty_ok = m.type in ("PING", "PONG")  # their empty content is left out (Pushpin)
            parts.append(encode_event(m.type, None if (empty_ok and not m.content) else m.content))
            content += len(m.content)
            n += 1
        close = (
            self._close is not None
            and not self.close_sent
            and (not self.one_event or n == 0)
            and n == len(self._queue)
        )
        close_len = 0
        if close:
            assert self._close is not None
            parts.append(encode_event("CLOSE", self._close or None))
            close_len = len(self._close)
        return Offer(
            b"".join(parts),
            n,
            content,
            close_len,
            close,
            n < len(self._queue),
            self._replay_bytes if n else 0,
        )

    def accept(self, offer: Offer, header: bytes | None) -> bool:
        """Apply the origin's answer to ``offer`` (``header``: its ``Content-Bytes-Accepted``,
        None when absent); True when the CLOSE is now sent."""
        total = offer.content + offer.close_content
        accepted = total
        if header is not None:
            value = header.strip()
            if _DECIMAL.fullmatch(value) and int(value) >= 0:
                accepted = int(value)
            if accepted > total:
                raise AcceptError(
                    f"origin accepted {accepted} content bytes of the {total} offered"
                )
        before_close = min(accepted, offer.content)
        messages, removed = self._remove(before_close, offer.messages)
        if offer.maxed and messages == 0 and removed == 0:
            raise AcceptError("origin accepted nothing of a request that left messages out")
        self._replay_messages = max(offer.messages - messages, 0)
        self._replay_bytes = offer.content - removed
        close = offer.close
        if close and before_close < offer.content:
            close = False  # content held back: the CLOSE is offered again after it
        elif close and accepted < total:
            raise AcceptError("origin accepted the content before the close, not the close")
        if close:
            self.close_sent = True
            self.clear()
        return close

    def _remove(self, count: int, limit: int) -> tuple[int, int]:
        """Drop ``count`` content bytes from the first ``limit`` messages: (whole messages
        removed, bytes removed)."""
        left = count
        messages = 0
        queue = self._queue
        while messages < len(queue) and messages < limit:
            m = queue[messages]
            size = len(m.content)
            take = min(left, size)
            left -= take
            self.size -= take
            if take < size:
                if take:
                    m.content = m.content[take:]
                break
            messages += 1
        if messages:
            del queue[:messages]
        return messages, count - left
