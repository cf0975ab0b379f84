# cython: language_level=3
"""Tagged netstring decoding (compiled twin of ``_tnetstring_py``; same API, values and
error texts, see there)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
import builtins

_py_float = builtins.float  # not Cython's inlined float(): same accepted syntax as the pure twin

cdef enum:
    MAX_DEPTH = 64
    MAX_LENGTH_DIGITS = 10


cdef object _pop(bytes data, const unsigned char* p, Py_ssize_t offset, Py_ssize_t limit,
                 int depth, Py_ssize_t* nxt):
    cdef Py_ssize_t i, colon = -1, stop, start, end, n, pos
    cdef unsigned char tag, c
    if depth > MAX_DEPTH:
        raise ValueError("tnetstring: nested too deeply")
    # <length>:
    stop = offset + MAX_LENGTH_DIGITS + 1
    if stop > limit:
        stop = limit
    for i in range(offset, stop):
        if p[i] == 58:  # ':'
            colon = i
            break
    if colon < 0:
        if limit <= offset:
            raise ValueError("tnetstring: empty input")
        raise ValueError("tnetstring: missing ':' after length")
    if colon == offset:
        raise ValueError("tnetstring: length is not a number")
    n = 0
    for i in range(offset, colon):
        c = p[i]
        if c < 48 or c > 57:
            raise ValueError("tnetstring: length is not a number")
        n = n * 10 + (c - 48)
    if colon - offset > 1 and p[offset] == 48:
        raise ValueError("tnetstring: length has a leading zero")
    start = colon + 1
    end = start + n
    if end >= limit:
        raise ValueError("tnetstring: truncated (length exceeds input)")
    tag = p[end]
    nxt[0] = end + 1
    if tag == 0x2C:  # ,
        return PyBytes_FromStringAndSize(<const char*>p + start, end - start)
    if tag == 0x7D:  # }
        result = {}
        pos = start
        while pos < end:
            key = _pop(data, p, pos, end, depth + 1, &pos)
            if type(key) is not bytes:
                raise ValueError("tnetstring: dict key is not a string")
            if pos >= end:
                raise ValueError("tnetstring: dict key without value")
            result[key] = _pop(data, p, pos, end, depth + 1, &pos)
        nxt[0] = end + 1
        return result
    if tag == 0x5D:  # ]
        items = []
        pos = start
        while pos < end:
            items.append(_pop(data, p, pos, end, depth + 1, &pos))
        nxt[0] = end + 1
        return items
    if tag == 0x23:  # #
        i = start
        if i < end and (p[i] == 45 or p[i] == 43):  # - +
            i += 1
        if i >= end:
            raise ValueError("tnetstring: bad integer")
        for i in range(i, end):
            if p[i] < 48 or p[i] > 57:
                raise ValueError("tnetstring: bad integer")
        return int(data[start:end])
    if tag == 0x5E:  # ^
        try:
            return _py_float(data[start:end])  # Python's parser: Cython's own accepts "1.5e+_6"
        except ValueError:
            raise ValueError("tnetstring: bad float") from None
    if tag == 0x21:  # !
        body = data[start:end]
        if body == b"true":
            return True
        if body == b"false":
            return False
        raise ValueError("tnetstring: bad boolean")
    if tag == 0x7E:  # ~
        if end != start:
            raise ValueError("tnetstring: null with data")
        return None
    raise ValueError(f"tnetstring: unknown type tag {chr(tag)!r}")


def tnet_pop(bytes data, Py_ssize_t offset=0):
    cdef Py_ssize_t nxt = 0
    if offset < 0 or offset > PyBytes_GET_SIZE(data):
        raise ValueError("tnetstring: offset out of range")
    value = _pop(data, <const unsigned char*>PyBytes_AS_STRING(data), offset,
                 PyBytes_GET_SIZE(data), 0, &nxt)
    return value, nxt
