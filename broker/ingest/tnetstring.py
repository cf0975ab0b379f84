"""Tagged netstrings (tnetstrings), sans-IO: the framing of Pushpin's ZeroMQ publish inputs.

A value is ``<length>:<data><tag>``; the tag gives the type::

    ,  byte string        #  integer        ^  float        !  boolean ("true"/"false")
    ~  null (empty data)  ]  list (concatenated values)     }  dict (key, value, key, ...)

Decoding returns ``bytes`` for every string (tnetstrings carry no text type) and ``dict`` keys
as ``bytes``.  Encoding accepts ``str`` too (encoded as UTF-8), and ``str`` or ``bytes`` keys.
Malformed input raises ``RemoteProtocolError``; nothing here does I/O.  Decoding is
``_speedups``' ``tnet_pop`` (a Cython twin: the bare-tnetstring publish input spent most of its
time here).
"""

from __future__ import annotations

from typing import Any

from _speedups import tnet_pop as _tnet_pop
from broker.errors import RemoteProtocolError

MAX_DEPTH = 64


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
                raise ValueError(
                    f"tnetstring: dict key must be bytes or str, not {type(k).__name__}"
                )
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
    try:
        return _tnet_pop(bytes(data), offset)
    except ValueError as exc:  # the decoder's reason (_speedups/_tnetstring_*.py)
        raise RemoteProtocolError(str(exc)) from None
