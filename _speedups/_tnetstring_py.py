"""Tagged netstring decoding (pure-Python twin of ``_tnetstring_c``).

``tnet_pop(data, offset)`` decodes the tnetstring starting at ``offset`` (0 <= offset <=
len(data)) and returns (value, offset just past it): ``bytes`` for strings and dict keys,
``int``, ``float``, ``bool``, ``None``, ``list``, ``dict``.  Malformed input raises
``ValueError`` whose text is the reason (``broker.ingest.tnetstring`` turns it into a
``RemoteProtocolError``).  See ``broker.ingest.tnetstring`` for the format.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64
_MAX_LENGTH_DIGITS = 10  # the length prefix; 10 digits is already far beyond any ZeroMQ frame


def tnet_pop(data: bytes, offset: int = 0) -> tuple[Any, int]:
    if offset < 0 or offset > len(data):
        raise ValueError("tnetstring: offset out of range")
    return _pop(data, offset, len(data), 0)


def _header(data: bytes, offset: int, limit: int) -> tuple[int, int, int]:
    """Parse ``<length>:`` (within ``data[:limit]``); return (data start, data end, tag index)."""
    colon = data.find(b":", offset, min(limit, offset + _MAX_LENGTH_DIGITS + 1))
    if colon < 0:
        if limit <= offset:
            raise ValueError("tnetstring: empty input")
        raise ValueError("tnetstring: missing ':' after length")
    digits = data[offset:colon]
    if not digits or not digits.isdigit():
        raise ValueError("tnetstring: length is not a number")
    if len(digits) > 1 and digits[0:1] == b"0":
        raise ValueError("tnetstring: length has a leading zero")
    start = colon + 1
    end = start + int(digits)
    if end >= limit:
        raise ValueError("tnetstring: truncated (length exceeds input)")
    return start, end, end


def _pop(data: bytes, offset: int, limit: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ValueError("tnetstring: nested too deeply")
    start, end, tagpos = _header(data, offset, limit)
    tag = data[tagpos]
    body = data[start:end]
    nxt = tagpos + 1
    if tag == 0x2C:  # ,
        return body, nxt
    if tag == 0x23:  # #
        if not _is_int_literal(body):
            raise ValueError("tnetstring: bad integer")
        return int(body), nxt
    if tag == 0x5E:  # ^
        try:
            return float(body), nxt
        except ValueError:
            raise ValueError("tnetstring: bad float") from None
    if tag == 0x21:  # !
        if body == b"true":
            return True, nxt
        if body == b"false":
            return False, nxt
        raise ValueError("tnetstring: bad boolean")
    if tag == 0x7E:  # ~
        if body:
            raise ValueError("tnetstring: null with data")
        return None, nxt
    if tag == 0x5D:  # ]
        items = []
        pos = start
        while pos < end:
            value, pos = _pop(data, pos, end, depth + 1)
            items.append(value)
        return items, nxt
    if tag == 0x7D:  # }
        result: dict[bytes, Any] = {}
        pos = start
        while pos < end:
            key, pos = _pop(data, pos, end, depth + 1)
            if not isinstance(key, bytes):
                raise ValueError("tnetstring: dict key is not a string")
            if pos >= end:
                raise ValueError("tnetstring: dict key without value")
            value, pos = _pop(data, pos, end, depth + 1)
            result[key] = value
        return result, nxt
    raise ValueError(f"tnetstring: unknown type tag {chr(tag)!r}")


def _is_int_literal(body: bytes) -> bool:
    digits = body[1:] if body[:1] in (b"-", b"+") else body
    return bool(digits) and digits.isdigit()
