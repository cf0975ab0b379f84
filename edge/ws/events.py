"""The WebSocket-over-HTTP event codec (sans-IO; reference 4.2).

A body is a concatenation of events: ``NAME SP HEXLEN CRLF <bytes> CRLF`` or ``NAME CRLF`` when
the event has no content.  Names: ``OPEN``, ``TEXT``, ``BINARY``, ``PING``, ``PONG``, ``CLOSE``
(content: 2-byte big-endian code + UTF-8 reason, or none), ``DISCONNECT``.  The length is
written in lowercase hex; any base-16 integer is accepted.  As in Pushpin, a missing CRLF after
an event line or a bad length makes the whole body invalid (``EventsError``), and content
shorter than announced is taken as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.errors import RemoteProtocolError

CONTENT_TYPE = "application/websocket-events"
NAMES = frozenset(["OPEN", "TEXT", "BINARY", "PING", "PONG", "CLOSE", "DISCONNECT"])


class EventsError(RemoteProtocolError):
    """An ``application/websocket-events`` body could not be decoded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=502, close_code=1011)


@dataclass(frozen=True, slots=True)
class WsEvent:
    type: str
    content: bytes | None = None


def encode_event(type_: str, content: bytes | None = None) -> bytes:
    if content is None:
        return type_.encode("ascii") + b"\r\n"
    return b"%s %x\r\n%s\r\n" % (type_.encode("ascii"), len(content), content)


def encode_events(events: Iterable[WsEvent]) -> bytes:
    return b"".join(encode_event(e.type, e.content) for e in events)


def close_content(code: int | None, reason: str = "") -> bytes | None:
    """CLOSE event content for a close code (None: a bare ``CLOSE``)."""
    if code is None:
        return None
    return code.to_bytes(2, "big") + reason.encode("utf-8")


def parse_close_content(content: bytes | None) -> tuple[int | None, str]:
    """``(code, reason)`` of a CLOSE event (``(None, "")`` when it has no code)."""
    if not content or len(content) < 2:
        return None, ""
    return int.from_bytes(content[:2], "big"), content[2:].decode("utf-8", "replace")


def decode_events(body: bytes) -> list[WsEvent]:
    out: list[WsEvent] = []
    start = 0
    size = len(body)
    while start < size:
        at = body.find(b"\r\n", start)
        if at == -1:
            raise EventsError("bad event line: no CRLF")
        line = body[start:at]
        start = at + 2
        sp = line.find(b" ")
        if sp == -1:
            name, content = line, None
        else:
            name = line[:sp]
            hexlen = line[sp + 1 :].strip()
            try:
                n = int(hexlen, 16)
            except ValueError:
                raise EventsError(f"bad event length {hexlen[:20]!r}") from None
            if n < 0:
                raise EventsError("negative event length")
            content = body[start : start + n]
            start += n + 2
        try:
            type_ = name.decode("ascii")
        except UnicodeDecodeError:
            raise EventsError("event name is not ASCII") from None
        if not type_:
            raise EventsError("empty event name")
        out.append(WsEvent(type_, content))
    return out
