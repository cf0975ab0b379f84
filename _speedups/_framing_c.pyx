# cython: language_level=3
"""HTTP/1.1 chunked framing (compiled twin of ``_framing_py``)."""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy

cdef const char* _HEX = b"0123456789ABCDEF"


cdef Py_ssize_t _hexlen(Py_ssize_t n):
    cdef Py_ssize_t k = 0
    while n:
        n >>= 4
        k += 1
    return k


cdef Py_ssize_t _frame_into(char* out, const char* src, Py_ssize_t n):
    cdef Py_ssize_t k = _hexlen(n), i
    for i in range(k):
        out[k - 1 - i] = _HEX[(n >> (4 * i)) & 15]
    out[k] = 13
    out[k + 1] = 10
    memcpy(out + k + 2, src, n)
    out[k + 2 + n] = 13
    out[k + 3 + n] = 10
    return k + 4 + n


def http_chunk(bytes data):
    """Frame ``data`` as one HTTP/1.1 chunk.  Empty data gives b"" (never the last-chunk marker)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n == 0:
        return b""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _hexlen(n) + 4 + n)
    _frame_into(PyBytes_AS_STRING(out), PyBytes_AS_STRING(data), n)
    return out


def http_chunks(list parts):
    """Frame each non-empty part as its own chunk and join them."""
    cdef Py_ssize_t total = 0, n, pos = 0
    cdef bytes p
    for p in parts:
        n = PyBytes_GET_SIZE(p)
        if n:
            total += _hexlen(n) + 4 + n
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* buf = PyBytes_AS_STRING(out)
    for p in parts:
        n = PyBytes_GET_SIZE(p)
        if n:
            pos += _frame_into(buf + pos, PyBytes_AS_STRING(p), n)
    return out
