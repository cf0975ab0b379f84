# cython: language_level=3
"""WebSocket frames: parse and build (compiled twin of ``_wsframe_py``; same API, see there)."""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy
from libc.stdint cimport uint64_t


cdef inline void _xor(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                      const unsigned char* key) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = src[i] ^ key[i & 3]


def ws_mask(bytes data, bytes key):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n == 0:
        return b""
    if PyBytes_GET_SIZE(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    _xor(<unsigned char*>PyBytes_AS_STRING(out), <const unsigned char*>PyBytes_AS_STRING(data), n,
         <const unsigned char*>PyBytes_AS_STRING(key))
    return out


def ws_frame(int opcode, payload, fin=True, mask_key=None):
    if not 0 <= opcode <= 15:
        raise ValueError("opcode must be 0..15")
    cdef bytes p = payload if type(payload) is bytes else bytes(payload)
    cdef bytes k
    cdef Py_ssize_t n = PyBytes_GET_SIZE(p)
    cdef Py_ssize_t hl = 2 if n < 126 else (4 if n < 65536 else 10)
    cdef int masked = mask_key is not None
    if masked:
        k = mask_key if type(mask_key) is bytes else bytes(mask_key)
        if PyBytes_GET_SIZE(k) != 4:
            raise ValueError("mask key must be 4 bytes")
        hl += 4
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hl + n)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    cdef int i
    cdef uint64_t u = <uint64_t>n
    o[0] = (0x80 if fin else 0) | opcode
    cdef unsigned char mbit = 0x80 if masked else 0
    if n < 126:
        o[1] = mbit | <unsigned char>n
        i = 2
    elif n < 65536:
        o[1] = mbit | 126
        o[2] = (n >> 8) & 0xFF
        o[3] = n & 0xFF
        i = 4
    else:
        o[1] = mbit | 127
        for i in range(8):
            o[2 + i] = (u >> (8 * (7 - i))) & 0xFF
        i = 10
    if masked:
        memcpy(o + i, PyBytes_AS_STRING(k), 4)
        _xor(o + i + 4, <const unsigned char*>PyBytes_AS_STRING(p), n,
             <const unsigned char*>PyBytes_AS_STRING(k))
    else:
        memcpy(o + i, PyBytes_AS_STRING(p), n)
    return out


def ws_parse(const unsigned char[:] data, masked, Py_ssize_t max_payload):
    cdef list frames = []
    cdef Py_ssize_t pos = 0, at, size = data.shape[0]
    cdef uint64_t n
    cdef unsigned char b0, b1, opcode
    cdef int fin, has_mask, want_mask = 1 if masked else 0, j
    cdef unsigned char key[4]
    cdef bytes payload
    cdef unsigned char* dst
    while size - pos >= 2:
        b0 = data[pos]
        b1 = data[pos + 1]
        fin = (b0 & 0x80) != 0
        opcode = b0 & 0x0F
        if (b0 & 0x70) or (3 <= opcode <= 7) or opcode >= 11:
            return frames, pos, 1002
        has_mask = (b1 & 0x80) != 0
        if has_mask != want_mask:
            return frames, pos, 1002
        n = b1 & 0x7F
        at = pos + 2
        if opcode >= 8 and (n > 125 or not fin):
            return frames, pos, 1002
        if n == 126:
            if size - at < 2:
                break
            n = (<uint64_t>data[at] << 8) | data[at + 1]
            at += 2
        elif n == 127:
            if size - at < 8:
                break
            if data[at] & 0x80:
                return frames, pos, 1002
            n = 0
            for j in range(8):
                n = (n << 8) | data[at + j]
            at += 8
        if max_payload < 0 or n > <uint64_t>max_payload:
            return frames, pos, 1009
        if has_mask:
            if size - at < 4:
                break
            for j in range(4):
                key[j] = data[at + j]
            at += 4
        if <uint64_t>(size - at) < n:
            break
        payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
        dst = <unsigned char*>PyBytes_AS_STRING(payload)
        if n:
            if has_mask:
                _xor(dst, &data[at], <Py_ssize_t>n, key)
            else:
                memcpy(dst, &data[at], <Py_ssize_t>n)
        frames.append((bool(fin), opcode, payload))
        pos = at + <Py_ssize_t>n
    return frames, pos, 0
