"""Tagged netstrings (tnetstrings), sans-IO: the framing of Pushpin's ZeroMQ publish inputs.

A value is ``<length>:<data><tag>``; the tag gives the type::

    ,  byte string        #  integer        ^  float        !  boolean ("true"/"false")
    ~  null (empty data)  ]  list (concatenated values)     }  dict (key, value, key, ...)

Decoding returns ``bytes`` for every string (tnetstrings carry no text type) and ``dict`` keys
as ``bytes``.  Encoding accepts ``str`` too (encoded as UTF-8), and ``str`` or ``bytes`` keys.
Malformed input raises ``RemoteProtocolError``; nothing here does I/O.
"""
from __future__ import annotations

from typing import Any

from broker.errors import RemoteProtocolError

MAX_DEPTH = 64
_MAX_LENGTH_DIGITS = 10  # the length prefix; 10 digits is already far beyond any ZeroMQ frame


def dumps(value: Any) -> bytes:
    """Encode ``value`` (bytes, str, int, float, bool, None, list, tuple, dict) as a tnetstring."""
    out: list[bytes] = []
    _dump(value, out, 0)
    return b"".join(out)


def _frame(data: bytes, tag: bytes, out: list[bytes]) -> None:
    out.append(b"%d:" % len(data))
    out.append(data)
    out.append(tag)


def _dump(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("tnetstring: value nested too deeply")
    # bool before int: bool is a subclass of int
    if value is None:
        out.append(b"0:~")
    elif value is True:
        out.append(b"4:true!")
    elif value is False:
        out.append(b"5:false!")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _frame(bytes(value), b",", out)
    elif isinstance(value, str):
        _frame(value.encode("utf-8"), b",", out)
    elif isinstance(value, int):
        _frame(b"%d" % value, b"#", out)
    elif isinstance(value, float):
        _frame(repr(value).encode("ascii"), b"^", out)
    elif isinstance(value, (list, tuple)):
        parts: list[bytes] = []
        for v in value:
            _dump(v, parts, depth + 1)
        _frame(b"".join(parts), b"]", out)
    elif isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if not isinstance(k, (bytes, str)):
                raise ValueError(f"tnetstring: dict key must be bytes or str, not {type(k).__name__}")
            _dump(k, parts, depth + 1)
            _dump(v, parts, depth + 1)
        _frame(b"".join(parts), b"}", out)
    else:
        raise ValueError(f"tnetstring: cannot encode {type(value).__name__}")


def loads(data: bytes) -> Any:
    """Decode exactly one tnetstring that spans all of ``data``."""
    value, end = pop(data, 0)
    if end != len(data):
        raise RemoteProtocolError("tnetstring: trailing data after value")
    return value


def pop(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode the tnetstring starting at ``offset``; return (value, offset just past it)."""
    data = bytes(data)
    return _pop(data, offset, len(data), 0)


def _header(data: bytes, offset: int, limit: int) -> tuple[int, int, int]:
    """Parse ``<length>:`` (within ``data[:limit]``); return (data start, data end, tag index)."""
    colon = data.find(b":", offset, min(limit, offset + _MAX_LENGTH_DIGITS + 1))
    if colon < 0:
        if limit <= offset:
            raise RemoteProtocolError("tnetstring: empty input")
        raise RemoteProtocolError("tnetstring: missing ':' after length")
    digits = data[offset:colon]
    if not digits or not digits.isdigit():
        raise RemoteProtocolError("tnetstring: length is not a number")
    if len(digits) > 1 and digits[0:1] == b"0":
        raise RemoteProtocolError("tnetstring: length has a leading zero")
    start = colon + 1
    end = start + int(digits)
    if end >= limit:
        raise RemoteProtocolError("tnetstring: truncated (length exceeds input)")
    return start, end, end


def _pop(data: bytes, offset: int, limit: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise RemoteProtocolError("tnetstring: nested too deeply")
    start, end, tagpos = _header(data, offset, limit)
    tag = data[tagpos]
    body = data[start:end]
    nxt = tagpos + 1
    if tag == 0x2C:  # ,
        return body, nxt
    if tag == 0x23:  # #
        if not _is_int_literal(body):
            raise RemoteProtocolError("tnetstring: bad integer")
        return int(body), nxt
    if tag == 0x5E:  # ^
        try:
            return float(body), nxt
        except ValueError:
            raise RemoteProtocolError("tnetstring: bad float") from None
    if tag == 0x21:  # !
        if body == b"true":
            return True, nxt
        if body == b"false":
            return False, nxt
        raise RemoteProtocolError("tnetstring: bad boolean")
    if tag == 0x7E:  # ~
        if body:
            raise RemoteProtocolError("tnetstring: null with data")
        return None, nxt
    if tag == 0x5D:  # ]
        items = []
        pos = start
        while pos < end:
            value, pos = _pop(data, pos, end, depth + 1)
            items.append(value)
        return items, nxt
    if tag == 0x7D:  # }
        result: dict = {}
        pos = start
        while pos < end:
            key, pos = _pop(data, pos, end, depth + 1)
            if not isinstance(key, bytes):
                raise RemoteProtocolError("tnetstring: dict key is not a string")
            if pos >= end:
                raise RemoteProtocolError("tnetstring: dict key without value")
            value, pos = _pop(data, pos, end, depth + 1)
            result[key] = value
        return result, nxt
    raise RemoteProtocolError(f"tnetstring: unknown type tag {chr(tag)!r}")


def _is_int_literal(body: bytes) -> bool:
    digits = body[1:] if body[:1] in (b"-", b"+") else body
    return bool(digits) and digits.isdigit()
