"""permessage-deflate (RFC 7692) for client WebSockets when ``allow_compression`` is on
(sans-IO).

Theory of operation
-------------------
* **Negotiation** (``negotiate``): the first acceptable ``permessage-deflate`` offer in the
  client's ``Sec-WebSocket-Extensions`` is taken, as Pushpin's connection manager does: an offer
  with an unknown or repeated parameter, or a bad window size, is skipped, and so is one asking
  for ``server_max_window_bits`` below 15.  The answer always carries
  ``server_no_context_takeover`` (RFC 7692 7.1.1.1 lets a server add it unasked): every message
  the edge sends is compressed on its own, so the compressed form of a published message is
  built once per message and channel (``deflate_message``) and is valid for every subscriber
  (``edge.sync.deliver``), instead of once per client with a per-client window.
  ``client_no_context_takeover`` is acknowledged when offered.
* **Sending**: ``deflate_message`` is a fresh raw-deflate stream, sync-flushed, without the
  trailing ``00 00 ff ff`` (7.2.1); the first frame of the message has RSV1 set
  (``compressed_frames``).  Control frames are never compressed.
* **Receiving** (``Inflater``): the frame parser (``_speedups.ws_parse``) refuses RSV bits, so on
  a compressed connection ``take_rsv1`` first walks the frame headers of the buffered bytes,
  notes each frame's RSV1 and clears it; the connection then joins a compressed message's
  frames and inflates it, keeping the client's window between messages unless it offered
  ``client_no_context_takeover``.  The inflated size is capped (``max_size``): a small message
  that inflates past the limit fails the connection with 1009, never buffering more.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from broker.errors import RemoteProtocolError
from edge.http1.headers import all_params

NAME = "permessage-deflate"
_WINDOW_BITS = 15
_TAIL = b"\x00\x00\xff\xff"
_PARAMS = frozenset(
    [
        "client_no_context_takeover",
        "server_no_context_takeover",
        "client_max_window_bits",
        "server_max_window_bits",
    ]
)


class InflateError(RemoteProtocolError):
    """A compressed message could not be inflated (``close_code``: 1007, or 1009 when too big)."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason, status=400, close_code=close_code)


@dataclass(frozen=True, slots=True)
class Deflate:
    """What was agreed with one client."""

    client_no_context_takeover: bool = False

    def response(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value of the 101."""
        out = NAME + "; server_no_context_takeover"
        if self.client_no_context_takeover:
            out += "; client_no_context_takeover"
        return out


def _bits(value: str, default: int | None) -> int | None:
    """A window-bits parameter's value ("": none given; None: invalid)."""
    if not value:
        return default
    v = value.strip()
    if not v.isdigit() or not 8 <= int(v) <= 15:
        return None
    return int(v)


def _offer(params: list[tuple[str, str]]) -> Deflate | None:
    seen: set[str] = set()
    client_nct = False
    for name, value in params[1:]:
        name = name.lower()
        if name not in _PARAMS or name in seen:
            return None
        seen.add(name)
        if name.endswith("no_context_takeover"):
            if value:
                return None
            client_nct = client_nct or name.startswith("client")
        elif name == "client_max_window_bits":
            if _bits(value, _WINDOW_BITS) is None:
                return None
        elif _bits(value, None) != _WINDOW_BITS:  # server_max_window_bits below 15: no
            return None
    return Deflate(client_no_context_takeover=client_nct)


def negotiate(headers: list[tuple[bytes, bytes]]) -> Deflate | None:
    """The agreement for a client's handshake headers, or None (no acceptable offer)."""
    values = [
        ("Sec-WebSocket-Extensions", v.decode("latin-1"))
        for k, v in headers
        if k.lower() == b"sec-websocket-extensions"
    ]
    if not values:
        return None
    for params in all_params(values, "Sec-WebSocket-Extensions"):
        if params and params[0][0].lower() == NAME:
            agreed = _offer(params)
            if agreed is not None:
                return agreed
    return None


def deflate_message(data: bytes) -> bytes:
    """One message's payload, compressed on its own (no context carried to the next)."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -_WINDOW_BITS)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(_TAIL) else out


def set_rsv1(frame: bytes) -> bytes:
    """``frame`` (a first data frame) marked compressed."""
    return bytes([frame[0] | 0x40]) + frame[1:]


def take_rsv1(buf: bytearray, pos: int) -> tuple[list[bool], int]:
    """Walk the frame headers in ``buf`` from ``pos`` (the start of a frame): clear each frame's
    RSV1 bit and return the bits, in order, with where the next unwalked header starts.  A
    header not yet complete stops the walk (walked again once more bytes came)."""
    bits: list[bool] = []
    size = len(buf)
    while size - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n = b1 & 0x7F
        at = pos + 2
        if n == 126:
            if size - at < 2:
                break
            n = int.from_bytes(buf[at : at + 2], "big")
            at += 2
        elif n == 127:
            if size - at < 8:
                break
            n = int.from_bytes(buf[at : at + 8], "big")
            at += 8
        if b1 & 0x80:
            at += 4
        bits.append(bool(b0 & 0x40))
        buf[pos] = b0 & ~0x40
        pos = at + n
    return bits, pos


class Inflater:
    """Inflates one client's compressed messages (its window kept between messages unless it
    offered ``client_no_context_takeover``)."""

    __slots__ = ("_d", "_reset")

    def __init__(self, agreed: Deflate) -> None:
        self._reset = agreed.client_no_context_takeover
        self._d: zlib._Decompress | None = None

    def inflate(self, data: bytes, max_size: int) -> bytes:
        d = self._d
        if d is None:
            d = self._d = zlib.decompressobj(-_WINDOW_BITS)
        try:
            out = d.decompress(data + _TAIL, max_size + 1)
        except zlib.error as exc:
            self._d = None
            raise InflateError(1007, "bad compressed message") from exc
        if len(out) > max_size or d.unconsumed_tail:
            self._d = None
            raise InflateError(1009, "message too big")
        if self._reset:
            self._d = None
        return out
