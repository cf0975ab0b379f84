"""One WebSocket connection's protocol state (sans-IO): frames in, messages out, and back.

Theory of operation
-------------------
Frames are parsed and built by the ``_speedups`` twins (``ws_parse``/``ws_frame``); this module
adds what sits above single frames (RFC 6455 sections 5.4 to 7):

* **Fragmentation**: a data frame with FIN clear starts a message, continuation frames extend
  it, control frames may come in between.  A continuation with no message started, or a new
  data frame while one is open, is a protocol error (1002).
* **Limits**: a message (all fragments together) larger than ``max_message`` fails the
  connection with 1009 before more of it is buffered, and so does a message in more than
  ``MAX_MESSAGE_FRAGMENTS`` frames (empty continuation frames cost nothing against
  ``max_message``, yet each costs a parse and a list slot).  Text messages must be UTF-8 (1007).
* **Close handshake** (states as data, ``CloseState``): ``OPEN`` -> we send a close ->
  ``LOCAL_SENT`` -> the peer's close arrives -> ``CLOSED``; or the peer's close arrives first ->
  ``REMOTE_RECEIVED`` (the caller answers with ``close()``) -> ``CLOSED``.  Nothing but close
  frames is sent after our close; data arriving after the peer's close is ignored.
* **Masking**: a server requires masked frames from its client and sends unmasked ones; a client
  (``client=True``, used for WebSocket-to-WebSocket proxying) masks with keys from ``mask_key``.
* **Compression** (``inflater``, when permessage-deflate was agreed; ``edge.ws.deflate``): a
  message whose first frame has RSV1 is inflated once complete, capped at ``max_message``
  (1009 past it, 1007 when it does not inflate); RSV1 on a control or continuation frame is a
  protocol error (1002).  What we send is compressed by the caller (``edge.ws.deflate``).

``receive_data(data)`` returns events (``Message``, ``Ping``, ``Pong``, ``Close``) and raises
``WsError`` (a ``RemoteProtocolError`` with ``close_code``) when the peer broke the protocol; the
caller then sends ``close(exc.close_code, exc.reason)`` and drops the connection.  Nothing here
answers pings by itself: the caller decides (``pong()``).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass

from _speedups import ws_frame, ws_parse
from broker.errors import RemoteProtocolError
from edge.ws.deflate import InflateError, Inflater, take_rsv1

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
DEFAULT_MAX_MESSAGE = 1 << 20
# frames of one message (the first and its continuations); browsers send one, libraries a few
MAX_MESSAGE_FRAGMENTS = 1024


class WsError(RemoteProtocolError):
    """The peer broke the WebSocket protocol; ``close_code`` says how to close."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason, status=400, close_code=close_code)


class CloseState(enum.Enum):
    OPEN = "open"
    LOCAL_SENT = "local-sent"
    REMOTE_RECEIVED = "remote-received"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Message:
    binary: bool
    data: bytes  # text messages: UTF-8 bytes (validated)


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int | None  # None: the close frame had no status code (1005)
    reason: str


# what receive_data returns
Event = Message | Ping | Pong | Close


def valid_close_code(code: int) -> bool:
    """May this code appear in a close frame on the wire (RFC 6455 7.4)?"""
    return (
        code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
        or 3000 <= code <= 4999
    )


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The payload of a close frame (empty without a code; reason cut to fit 125 bytes)."""
    if code is None:
        return b""
    r = reason.encode("utf-8")[:123]
    while True:
        try:
            r.decode("utf-8")
            break
        except UnicodeDecodeError:
            r = r[:-1]
    return code.to_bytes(2, "big") + r


def parse_close_payload(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise WsError(1002, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not valid_close_code(code):
        raise WsError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WsError(1007, "close reason is not UTF-8") from exc
    return Close(code, reason)


class WsConnection:
    def __init__(
        self,
        *,
        client: bool = False,
        max_message: int = DEFAULT_MAX_MESSAGE,
        mask_key: Callable[[int], bytes] = os.urandom,
        inflater: Inflater | None = None,
    ) -> None:
        self.client = client
        self.max_message = max_message
        self._mask_key = mask_key
        self.state = CloseState.OPEN
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._frags = 0  # frames of the message being assembled
        self._op: int | None = None  # opcode of the message being assembled
        self.close_received: Close | None = None
        self.inflater = inflater
        self._rsv: list[bool] = []  # RSV1 of the buffered frames walked so far (compressed)
        self._walked = 0  # where the next unwalked frame header starts in _buf
        self._compressed = False  # the message being assembled is compressed

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state in (CloseState.REMOTE_RECEIVED, CloseState.CLOSED):
            return []
        self._buf += data
        if self.inflater is not None:
            bits, self._walked = take_rsv1(self._buf, self._walked)
            self._rsv += bits
        frames, used, err = ws_parse(self._buf, not self.client, self.max_message)
        del self._buf[:used]
        events: list[Event] = []
        flags: list[bool] = []
        if self.inflater is not None:
            flags = self._rsv[: len(frames)]
            del self._rsv[: len(frames)]
            self._walked -= used
        for i, (fin, op, payload) in enumerate(frames):
            if flags and flags[i]:
                if op >= 8 or op == OP_CONT:
                    raise WsError(1002, "RSV1 on a control or continuation frame")
                self._compressed = True
            ev = self._frame(fin, op, payload)
            if ev is not None:
                events.append(ev)
                if isinstance(ev, Close):
                    self._buf.clear()
                    return events
        if err == 1009:
            raise WsError(1009, "message too big")
        if err:
            raise WsError(err, "bad frame")
        return events

    def _frame(self, fin: bool, op: int, payload: bytes) -> Event | None:
        if op >= 8:
            if op == OP_PING:
                return Ping(payload)
            if op == OP_PONG:
                return Pong(payload)
            close = parse_close_payload(payload)
            self.close_received = close
            self.state = (
                CloseState.CLOSED
                if self.state is CloseState.LOCAL_SENT
                else CloseState.REMOTE_RECEIVED
            )
            return close
        if op == OP_CONT:
            if self._op is None:
                raise WsError(1002, "continuation frame without a message")
        else:
            if self._op is not None:
                raise WsError(1002, "new message before the previous one ended")
            self._op = op
        self._size += len(payload)
        if self._size > self.max_message:
            raise WsError(1009, "message too big")
        self._frags += 1
        if self._frags > MAX_MESSAGE_FRAGMENTS:
            raise WsError(1009, f"message in more than {MAX_MESSAGE_FRAGMENTS} frames")
        if not fin:
            if payload:
                self._parts.append(payload)
            return None
        if self._parts:
            self._parts.append(payload)
            payload = b"".join(self._parts)
            self._parts = []
        binary = self._op == OP_BINARY
        self._op = None
        self._size = 0
        self._frags = 0
        if self._compressed:
            self._compressed = False
            assert self.inflater is not None
            try:
                payload = self.inflater.inflate(payload, self.max_message)
            except InflateError as exc:
                raise WsError(exc.close_code, exc.reason) from exc
        if not binary:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WsError(1007, "text message is not UTF-8") from exc
        if self.state is not CloseState.OPEN:
            return None  # data after our close: ignored
        return Message(binary, payload)

    # -- sending -------------------------------------------------------------------------------

    def _frame_out(self, op: int, payload: bytes, fin: bool = True) -> bytes:
        return ws_frame(op, payload, fin, self._mask_key(4) if self.client else None)

    def message(self, data: bytes, binary: bool = False) -> bytes:
        """The frame(s) of one message (b"" once we have sent a close)."""
        if self.state is not CloseState.OPEN:
            return b""
        return self._frame_out(OP_BINARY if binary else OP_TEXT, data)

    def ping(self, data: bytes = b"") -> bytes:
        return self._frame_out(OP_PING, data[:125]) if self.state is CloseState.OPEN else b""

    def pong(self, data: bytes = b"") -> bytes:
        return self._frame_out(OP_PONG, data[:125]) if self.state is CloseState.OPEN else b""

    def close(self, code: int | None = 1000, reason: str = "") -> bytes:
        """Our close frame (b"" if we already sent one); moves the close state on."""
        if self.state is CloseState.OPEN:
            self.state = CloseState.LOCAL_SENT
        elif self.state is CloseState.REMOTE_RECEIVED:
            self.state = CloseState.CLOSED
        else:
            return b""
        if code is not None and not valid_close_code(code):
            # never an invalid code on the wire (Pushpin relays an origin's verbatim): "no
            # status" codes and 0-999 (grip's WebSocketContext.close() defaults to 0) -> 1000
            code = 1000 if code < 1000 or code in (1005, 1006, 1015) else 1011
        return self._frame_out(OP_CLOSE, close_payload(code, reason))

    @property
    def closed(self) -> bool:
        return self.state is CloseState.CLOSED
