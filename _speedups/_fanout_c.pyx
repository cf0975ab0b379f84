# cython: language_level=3
"""The broker's fan-out frames, built and sent in one loop (compiled twin of ``_fanout_py``;
same API and behaviour, see there).

The envelope map is written by a small msgpack writer for exact ``None``/``bool``/``int`` (64
bits)/``float``/``str``/``bytes``/``dict``/``list`` values, byte for byte what
``msgpack.Packer(use_bin_type=True)`` writes; an envelope holding anything else (a subclass,
a tuple, a bigger int, deeper nesting) is packed by ``msgpack`` itself, so output and errors
are the same.  ``fan_out`` sends with libzmq's ``zmq_send`` on the pyzmq socket's handle (the
function found through pyzmq's own extension module), from one reused buffer: no frame object
and no pyzmq call per message; without it (or on a closed socket) it calls ``sock.send``.

The edges' ``decode_envelopes`` reads the envelope map with a small msgpack reader too (nil,
bools, ints, floats, str, bin, arrays, maps with str keys: all an envelope normally holds),
field by field into the envelope (no map dict), each value exactly what ``msgpack.unpackb``
returns (map keys interned as msgpack does, the recent ones kept by their bytes so they are
not decoded and hashed again); a body holding anything else (an ext type, a key not a str,
deep nesting, invalid UTF-8, trailing or missing bytes) is given to ``msgpack.unpackb`` itself,
so results and errors are the same.  100 envelopes: 1.17 -> 0.55 us a frame; the edge, 10,000
channels of one client at 60,000/s: -0.6 us an item (bench/RESULTS.md, eighteenth session).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject_GenericSetAttr
from cpython.ref cimport PyObject, Py_DECREF, Py_XDECREF, Py_XINCREF
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcmp, memcpy, memchr, memmove

from sys import intern as _intern

import msgpack
import zmq

# the contract; ``envelope_map`` is read at call time (``broker.wire`` imports ``_speedups``)
from broker import wire as _wire

cdef extern from "Python.h":
    void PyUnicode_InternInPlace(PyObject** p)
    PyObject* _utf8_or_null "PyUnicode_DecodeUTF8"(const char* s, Py_ssize_t size, const char* errors)
    void PyErr_Clear()
    int PyObject_IS_GC(object o)
    void PyObject_GC_UnTrack(void* op)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    bint PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

ctypedef int (*zmq_send_t)(void* sock, const void* buf, size_t n, int flags) noexcept nogil

# libzmq's zmq_msg_t: 64 opaque bytes, 8-byte aligned (zmq.h)
ctypedef struct zmq_msg_t:
    uint64_t _[8]

ctypedef int (*zmq_msg_init_t)(zmq_msg_t* msg) noexcept nogil
ctypedef int (*zmq_msg_recv_t)(zmq_msg_t* msg, void* sock, int flags) noexcept nogil
ctypedef void* (*zmq_msg_data_t)(zmq_msg_t* msg) noexcept nogil
ctypedef size_t (*zmq_msg_size_t)(const zmq_msg_t* msg) noexcept nogil
ctypedef int (*zmq_msg_close_t)(zmq_msg_t* msg) noexcept nogil
ctypedef int (*zmq_msg_more_t)(const zmq_msg_t* msg) noexcept nogil

cdef zmq_send_t _zmq_send = NULL
cdef zmq_msg_init_t _zmq_msg_init = NULL
cdef zmq_msg_recv_t _zmq_msg_recv = NULL
cdef zmq_msg_data_t _zmq_msg_data = NULL
cdef zmq_msg_size_t _zmq_msg_size = NULL
cdef zmq_msg_close_t _zmq_msg_close = NULL
cdef zmq_msg_more_t _zmq_msg_more = NULL
cdef int _zmq_bound = 0  # 0 not tried, 1 found, -1 not available
cdef int _ZMQ_DONTWAIT = zmq.NOBLOCK
cdef int _ETERM = zmq.ETERM

cdef object _pack = msgpack.Packer(use_bin_type=True).pack
cdef object _new = object.__new__
cdef object _Again = zmq.Again
cdef int MAX_DEPTH = 64

# The envelope map's keys (``broker.wire.ENVELOPE_FIELDS``, in order), packed: fixmap 7, then
# each key as a fixstr.  Kept as constants for speed; ``ENVELOPE_KEYS_PACKED`` shows them to
# tests/speedups/test_contract.py, which checks them against the contract.
cdef bytes K_HEAD = b"\x87\xa3seq"
cdef bytes K_EPOCH = b"\xa5epoch"
cdef bytes K_ID = b"\xa2id"
cdef bytes K_PREV = b"\xa7prev_id"
cdef bytes K_FORMATS = b"\xa7formats"
cdef bytes K_META = b"\xa4meta"
cdef bytes K_TS = b"\xa2ts"
ENVELOPE_KEYS_PACKED = (K_HEAD, K_EPOCH, K_ID, K_PREV, K_FORMATS, K_META, K_TS)


cdef void _bind_zmq():
    global _zmq_send, _zmq_bound, _zmq_msg_init, _zmq_msg_recv, _zmq_msg_data, _zmq_msg_size
    global _zmq_msg_close, _zmq_msg_more
    _zmq_bound = -1
    try:
        import ctypes
        import zmq.backend.cython._zmq as backend
        # dlsym on pyzmq's extension searches the libzmq it was loaded with
        lib = ctypes.CDLL(backend.__file__)
        addrs = [
            ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
            for name in (
                "zmq_send", "zmq_msg_init", "zmq_msg_recv", "zmq_msg_data", "zmq_msg_size",
                "zmq_msg_close", "zmq_msg_more",
            )
        ]
    except Exception:
        return
    if all(addrs):
        _zmq_send = <zmq_send_t><uintptr_t>addrs[0]
        _zmq_msg_init = <zmq_msg_init_t><uintptr_t>addrs[1]
        _zmq_msg_recv = <zmq_msg_recv_t><uintptr_t>addrs[2]
        _zmq_msg_data = <zmq_msg_data_t><uintptr_t>addrs[3]
        _zmq_msg_size = <zmq_msg_size_t><uintptr_t>addrs[4]
        _zmq_msg_close = <zmq_msg_close_t><uintptr_t>addrs[5]
        _zmq_msg_more = <zmq_msg_more_t><uintptr_t>addrs[6]
        _zmq_bound = 1


cdef struct Buf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap if b.cap else 256
    cdef char* p
    while cap < b.len + extra:
        cap *= 2
    p = <char*>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const char* p, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.len, p, n)
    b.len += n
    return 0


cdef inline int _putb(Buf* b, bytes data) except -1:
    return _put(b, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef inline int _put1(Buf* b, unsigned char c) except -1:
    if b.len + 1 > b.cap:
        _grow(b, 1)
    b.data[b.len] = <char>c
    b.len += 1
    return 0


cdef inline int _putbe(Buf* b, unsigned char tag, uint64_t v, int nbytes) except -1:
    """``tag`` then the low ``nbytes`` bytes of ``v``, big-endian."""
    cdef int i
    if b.len + 1 + nbytes > b.cap:
        _grow(b, 1 + nbytes)
    b.data[b.len] = <char>tag
    for i in range(nbytes):
        b.data[b.len + 1 + i] = <char>((v >> (8 * (nbytes - 1 - i))) & 0xff)
    b.len += 1 + nbytes
    return 0


cdef inline int _header(Buf* b, Py_ssize_t n, unsigned char fix, Py_ssize_t fixmax,
                        unsigned char t16, unsigned char t32) except -1:
    if n < fixmax:
        return _put1(b, fix | <unsigned char>n)
    if n < 65536:
        return _putbe(b, t16, <uint64_t>n, 2)
    return _putbe(b, t32, <uint64_t>n, 4)


cdef int _pack_obj(Buf* b, object o, int depth) except -1:
    """Append msgpack of ``o``; 1 when ``o`` holds a type this writer leaves to msgpack."""
    cdef type t = type(o)
    cdef Py_ssize_t n, pos
    cdef const char* s
    cdef long long v
    cdef int overflow = 0
    cdef double d
    cdef uint64_t bits
    cdef PyObject* key
    cdef PyObject* value
    if o is None:
        return _put1(b, 0xc0)
    if o is True:
        return _put1(b, 0xc3)
    if o is False:
        return _put1(b, 0xc2)
    if t is str:
        s = PyUnicode_AsUTF8AndSize(o, &n)
        if n < 32:
            _put1(b, 0xa0 | <unsigned char>n)
        elif n < 256:
            _putbe(b, 0xd9, <uint64_t>n, 1)
        elif n < 65536:
            _putbe(b, 0xda, <uint64_t>n, 2)
        elif n <= 0xffffffff:
            _putbe(b, 0xdb, <uint64_t>n, 4)
        else:
            return 1
        return _put(b, s, n)
    if t is bytes:
        n = PyBytes_GET_SIZE(o)
        if n < 256:
            _putbe(b, 0xc4, <uint64_t>n, 1)
        elif n < 65536:
            _putbe(b, 0xc5, <uint64_t>n, 2)
        elif n <= 0xffffffff:
            _putbe(b, 0xc6, <uint64_t>n, 4)
        else:
            return 1
        return _put(b, PyBytes_AS_STRING(o), n)
    if t is int:
        v = PyLong_AsLongLongAndOverflow(o, &overflow)
        if overflow:
            return 1
        if v >= 0:
            if v < 128:
                return _put1(b, <unsigned char>v)
            if v < 256:
                return _putbe(b, 0xcc, <uint64_t>v, 1)
            if v < 65536:
                return _putbe(b, 0xcd, <uint64_t>v, 2)
            if v < 4294967296:
                return _putbe(b, 0xce, <uint64_t>v, 4)
            return _putbe(b, 0xcf, <uint64_t>v, 8)
        if v >= -32:
            return _put1(b, <unsigned char>(v & 0xff))
        if v >= -128:
            return _putbe(b, 0xd0, <uint64_t>v, 1)
        if v >= -32768:
            return _putbe(b, 0xd1, <uint64_t>v, 2)
        if v >= -2147483648:
            return _putbe(b, 0xd2, <uint64_t>v, 4)
        return _putbe(b, 0xd3, <uint64_t>v, 8)
    if t is float:
        d = <double>o
        memcpy(&bits, &d, 8)
        return _putbe(b, 0xcb, bits, 8)
    if depth >= MAX_DEPTH:
        return 1
    if t is dict:
        n = len(<dict>o)
        if n > 0xffffffff:
            return 1
        _header(b, n, 0x80, 16, 0xde, 0xdf)
        pos = 0
        while PyDict_Next(o, &pos, &key, &value):
            if _pack_obj(b, <object>key, depth + 1) or _pack_obj(b, <object>value, depth + 1):
                return 1
        return 0
    if t is list:
        n = len(<list>o)
        if n > 0xffffffff:
            return 1
        _header(b, n, 0x90, 16, 0xdc, 0xdd)
        for item in <list>o:
            if _pack_obj(b, item, depth + 1):
                return 1
        return 0
    return 1


cdef int _pack_env(Buf* b, object env) except -1:
    """Append the envelope map of ``env``; 1 when msgpack must pack it."""
    _putb(b, K_HEAD)
    if _pack_obj(b, env.seq, 1):
        return 1
    _putb(b, K_EPOCH)
    if _pack_obj(b, env.epoch, 1):
        return 1
    _putb(b, K_ID)
    if _pack_obj(b, env.id, 1):
        return 1
    _putb(b, K_PREV)
    if _pack_obj(b, env.prev_id, 1):
        return 1
    _putb(b, K_FORMATS)
    if _pack_obj(b, env.formats, 1):
        return 1
    _putb(b, K_META)
    if _pack_obj(b, env.meta, 1):
        return 1
    _putb(b, K_TS)
    return _pack_obj(b, env.ts, 1)


cdef object _slow_map(object env):
    return _pack(_wire.envelope_map(env))


cdef int _frame(Buf* b, object env, bytes topic) except -1:
    """Append ``topic`` + the envelope to ``b``."""
    cdef Py_ssize_t tl = PyBytes_GET_SIZE(topic)
    cdef Py_ssize_t start = b.len
    cdef bytes packed
    _put(b, PyBytes_AS_STRING(topic), tl)
    if _pack_env(b, env):
        packed = _slow_map(env)
        b.len = start + tl
        _put(b, PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed))
    return 0


cdef bytes _topic(object channel):
    return channel.encode("utf-8") + b"\x00"


def encode_envelopes(envs):
    cdef Buf b
    cdef list out = []
    cdef object channel = None
    cdef bytes topic = None
    b.data = NULL
    b.len = b.cap = 0
    try:
        for env in envs:
            ch = env.channel
            if topic is None or ch != channel:
                topic = _topic(ch)
                channel = ch
            b.len = 0
            _frame(&b, env, topic)
            out.append(PyBytes_FromStringAndSize(b.data, b.len))
    finally:
        free(b.data)
    return out


BATCH_BYTES = 1 << 18


cdef int _retry(int err) except -1:
    """After a libzmq call failed with ``err``: 1 call it again (EINTR), 0 it would block
    (EAGAIN); any other error raised as pyzmq raises it."""
    if err == EINTR:
        return 1
    if err == EAGAIN:
        return 0
    if err == _ETERM:
        raise zmq.ContextTerminated(err)
    raise zmq.ZMQError(err)


cdef int _send_buf(void* handle, object send, const char* p, Py_ssize_t n) except -1:
    """Send ``p[:n]`` as one message without blocking: 1 sent, 0 it would block."""
    if handle == NULL:
        try:
            send(PyBytes_FromStringAndSize(p, n), _ZMQ_DONTWAIT)
            return 1
        except _Again:
            return 0
    while _zmq_send(handle, p, <size_t>n, _ZMQ_DONTWAIT) < 0:
        if not _retry(errno):
            return 0
    return 1


cdef inline void _put_u32(char* p, Py_ssize_t v) noexcept:
    p[0] = <char>((v >> 24) & 0xff)
    p[1] = <char>((v >> 16) & 0xff)
    p[2] = <char>((v >> 8) & 0xff)
    p[3] = <char>(v & 0xff)


cdef int _send_batch(Buf* b, Py_ssize_t hl, Py_ssize_t count, void* handle, object send) except -1:
    """Send the ``count`` frames batched in ``b`` after its ``hl`` topic bytes: one of them
    alone as the plain frame; 1 sent, 0 it would block."""
    if count == 1:
        return _send_buf(handle, send, b.data + hl + 4, b.len - hl - 4)
    return _send_buf(handle, send, b.data, b.len)


def fan_out(sock, envs, live, dict recent, bytes batch=None, Py_ssize_t batch_bytes=BATCH_BYTES):
    cdef list lst = envs if type(envs) is list else list(envs)
    cdef Py_ssize_t i, n = len(lst)
    cdef Py_ssize_t sent = 0, blocked = 0
    cdef Buf b
    cdef void* handle = NULL
    cdef bint is_live = False, started = False
    cdef object channel = None
    cdef bytes topic = None
    cdef Py_ssize_t hl = 0, count = 0, start, done = 0, end
    for i in range(n):
        env = lst[i]
        if i + 1 == n or (<object>lst[i + 1]).channel != env.channel:
            pos = (env.epoch, env.seq)
            PyObject_GC_UnTrack(<void*>pos)  # atoms: never in a cycle (see atom_pair)
            PyDict_SetItem(recent, env.channel, pos)
    handle = _handle(sock)
    send = sock.send
    b.data = NULL
    b.len = b.cap = 0
    try:
        if batch is not None:
            hl = PyBytes_GET_SIZE(batch)
            _putb(&b, batch)
            done = hl
        for i in range(n):
            env = lst[i]
            ch = env.channel
            if not started or ch != channel:
                started = True
                channel = ch
                is_live = ch in live
                topic = _topic(ch) if is_live else None
            if not is_live:
                continue
            if batch is None:
                b.len = 0
                _frame(&b, env, topic)
                if _send_buf(handle, send, b.data, b.len):
                    sent += 1
                else:
                    blocked += 1
                continue
            # batched: its length, then the frame; the message goes out before it would
            # pass batch_bytes, and this frame starts the next one
            start = b.len
            _put(&b, b"\0\0\0\0", 4)
            _frame(&b, env, topic)
            _put_u32(b.data + start, b.len - start - 4)
            end = b.len
            if count and end > batch_bytes:
                b.len = start
                if _send_batch(&b, hl, count, handle, send):
                    sent += count
                else:
                    blocked += count
                memmove(b.data + hl, b.data + start, <size_t>(end - start))
                b.len = end = hl + end - start
                count = 0
            count += 1
            done = end
    finally:
        try:
            if count:  # what was batched before an error too
                b.len = done
                if _send_batch(&b, hl, count, handle, send):
                    sent += count
                else:
                    blocked += count
        finally:
            free(b.data)
    return sent, blocked


def split_batch(bytes frame, Py_ssize_t start, wanted):
    """See the pure twin."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(frame), i = start, size, clen
    cdef const void* nul
    cdef list out = []
    if i < 0:
        raise ValueError("negative start")
    while i < n:
        if n - i < 4:
            raise ValueError("batch message cut in a length")
        size = ((<Py_ssize_t>p[i]) << 24) | (p[i + 1] << 16) | (p[i + 2] << 8) | p[i + 3]
        i += 4
        if size > n - i:
            raise ValueError("batch message cut in a frame")
        nul = memchr(p + i, 0, <size_t>size)
        clen = size if nul == NULL else <Py_ssize_t>(<const unsigned char*>nul - (p + i))
        if PyBytes_FromStringAndSize(<const char*>(p + i), clen) in wanted:
            out.append(PyBytes_FromStringAndSize(<const char*>(p + i), size))
        i += size
    return out


def send_frames(sock, list frames):
    cdef Py_ssize_t i, n = len(frames)
    cdef Py_ssize_t sent = 0, blocked = 0
    cdef void* handle = _handle(sock)
    cdef bytes frame
    if handle == NULL:
        send = sock.send
        for i in range(n):
            try:
                send(frames[i], _ZMQ_DONTWAIT)
                sent += 1
            except _Again:
                blocked += 1
        return sent, blocked
    for i in range(n):
        frame = frames[i]
        if _send_buf(handle, None, PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame)):
            sent += 1
        else:
            blocked += 1
    return sent, blocked


cdef void* _handle(sock):
    """The libzmq socket behind pyzmq's ``sock``, or NULL (libzmq not bound, or closed)."""
    if _zmq_bound == 0:
        _bind_zmq()
    if _zmq_bound == 1 and not sock.closed:
        return <void*><uintptr_t>sock.underlying
    return NULL


cdef int _recv_msg(void* handle, zmq_msg_t* msg) except -1:
    """One message part into ``msg`` (initialised here; the caller closes it when this
    returns 1), without waiting: 1 received, 0 none ready; ZeroMQ's errors raised."""
    cdef int err
    while True:
        _zmq_msg_init(msg)
        if _zmq_msg_recv(msg, handle, _ZMQ_DONTWAIT) >= 0:
            return 1
        err = errno
        _zmq_msg_close(msg)
        if not _retry(err):
            return 0


cdef inline bytes _msg_bytes(zmq_msg_t* msg):
    return PyBytes_FromStringAndSize(<char*>_zmq_msg_data(msg), <Py_ssize_t>_zmq_msg_size(msg))


def recv_frames(sock, Py_ssize_t limit):
    """Up to ``limit`` messages ready on ``sock`` now, each as bytes (one frame each: the
    edges' SUB and DEALER), read with libzmq's ``zmq_msg_recv`` (no pyzmq call and no
    ``zmq.Again`` raised per batch); without it (or on a closed socket), ``sock.recv``."""
    cdef list out = []
    cdef void* handle = _handle(sock)
    cdef zmq_msg_t msg
    if handle == NULL:
        recv = sock.recv
        try:
            while len(out) < limit:
                out.append(recv(_ZMQ_DONTWAIT))
        except _Again:
            pass
        return out
    while len(out) < limit and _recv_msg(handle, &msg):
        try:
            out.append(_msg_bytes(&msg))
        finally:
            _zmq_msg_close(&msg)
    return out


def recv_single(sock, Py_ssize_t limit):
    """Up to ``limit`` messages ready on ``sock`` now: those of one frame as bytes, and how
    many of more than one frame were read whole and left out (the broker's PULL input); with
    libzmq's ``zmq_msg_recv``/``zmq_msg_more``, else through pyzmq (the pure twin's way)."""
    cdef list out = []
    cdef Py_ssize_t multipart = 0
    cdef void* handle = _handle(sock)
    cdef zmq_msg_t msg
    cdef int more
    cdef bint skipping = False
    if handle == NULL:
        from _speedups import _fanout_py
        return _fanout_py.recv_single(sock, limit)
    # (a multipart message's parts arrive together: none ready never comes in the middle)
    while (skipping or len(out) + multipart < limit) and _recv_msg(handle, &msg):
        try:
            more = _zmq_msg_more(&msg)
            if skipping or more:
                if not skipping:
                    multipart += 1
                skipping = more != 0
            else:
                out.append(_msg_bytes(&msg))
        finally:
            _zmq_msg_close(&msg)
    return out, multipart


def make_envelope(cls, channel, seq, epoch, formats, id, prev_id, meta, ts):
    env = _new(cls)
    PyObject_GenericSetAttr(env, "channel", channel)
    PyObject_GenericSetAttr(env, "seq", seq)
    PyObject_GenericSetAttr(env, "epoch", epoch)
    PyObject_GenericSetAttr(env, "formats", formats)
    PyObject_GenericSetAttr(env, "id", id)
    PyObject_GenericSetAttr(env, "prev_id", prev_id)
    PyObject_GenericSetAttr(env, "meta", meta)
    PyObject_GenericSetAttr(env, "ts", ts)
    return env


cdef object _unpackb = msgpack.unpackb
# interned (as map keys read by _mp_str are): _envelope_fast compares them by identity
cdef str S_SEQ = _intern("seq")
cdef str S_EPOCH = _intern("epoch")
cdef str S_FORMATS = _intern("formats")
cdef str S_ID = _intern("id")
cdef str S_PREV = _intern("prev_id")
cdef str S_META = _intern("meta")
cdef str S_TS = _intern("ts")
cdef str S_MARKER = _intern("marker")


cdef inline object _get(dict m, str key):
    cdef PyObject* v = PyDict_GetItemWithError(m, key)
    if v == NULL:
        return None
    return <object>v


# -- the envelope map's msgpack reader (decode_envelopes) ----------------------------------------

cdef object _NO = object()  # "not read here": the body goes to msgpack.unpackb
cdef enum:
    _MP_DEPTH = 32  # deeper nesting goes to msgpack.unpackb (its own limit decides)

cdef union _F4:
    uint32_t u
    float f

cdef union _F8:
    uint64_t u
    double d


cdef inline uint32_t _be16(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 8) | <uint32_t>p[1]


cdef inline uint32_t _be32(const unsigned char* p) noexcept:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef inline uint64_t _be64(const unsigned char* p) noexcept:
    return (<uint64_t>_be32(p) << 32) | <uint64_t>_be32(p + 4)


# map keys seen lately, by their UTF-8 bytes: the interned str of each (one reference held per
# slot), so an envelope's keys ("seq", "formats", "http-stream", ...) are neither decoded nor
# hashed again
cdef enum:
    _KEYS = 64  # slots (a power of two)
    _KEY_MAX = 24  # longer keys are not kept
cdef PyObject* _key_str[_KEYS]
cdef char _key_raw[_KEYS][_KEY_MAX]
cdef Py_ssize_t _key_len[_KEYS]


cdef object _mp_str(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, Py_ssize_t ln,
                    Py_ssize_t* at, bint key):
    cdef PyObject* ref
    cdef uint32_t h = 2166136261u
    cdef Py_ssize_t j
    if ln > n - i:
        return _NO
    if key and ln < _KEY_MAX:
        for j in range(ln):  # FNV-1a: the slot
            h = (h ^ p[i + j]) * 16777619u
        h &= _KEYS - 1
        if _key_str[h] != NULL and _key_len[h] == ln and memcmp(_key_raw[h], p + i, ln) == 0:
            at[0] = i + ln
            return <object>_key_str[h]
    ref = _utf8_or_null(<const char*>p + i, ln, NULL)  # a new reference, or NULL
    if ref == NULL:
        PyErr_Clear()  # invalid UTF-8: msgpack.unpackb raises it
        return _NO
    at[0] = i + ln
    if key:  # interned, as msgpack.unpackb does with map keys (may swap the reference)
        PyUnicode_InternInPlace(&ref)
        if ln < _KEY_MAX:
            Py_XDECREF(_key_str[h])
            Py_XINCREF(ref)
            _key_str[h] = ref
            memcpy(_key_raw[h], p + i, ln)
            _key_len[h] = ln
    s = <object>ref  # (a reference of its own)
    Py_DECREF(s)  # the new reference taken over
    return s


cdef inline object _mp_key(const unsigned char* p, Py_ssize_t n, Py_ssize_t* at):
    """The map key at ``p[at[0]:n]`` (a fixstr or str8, interned), ``at[0]`` moved past it;
    ``_NO`` for any other key (msgpack decides: bytes allowed, others not)."""
    cdef Py_ssize_t i = at[0]
    cdef unsigned char b
    if i >= n:
        return _NO
    b = p[i]
    if 0xa0 <= b <= 0xbf:
        return _mp_str(p, n, i + 1, b & 0x1f, at, True)
    if b == 0xd9 and i + 1 < n:
        return _mp_str(p, n, i + 2, p[i + 1], at, True)
    return _NO


cdef object _mp(const unsigned char* p, Py_ssize_t n, Py_ssize_t* at, int depth):
    """The msgpack object at ``p[at[0]:n]``, ``at[0]`` moved past it; ``_NO`` for anything
    left to ``msgpack.unpackb`` (module docstring)."""
    cdef Py_ssize_t i = at[0], ln, k
    cdef unsigned char b
    cdef _F4 f4
    cdef _F8 f8
    cdef list lst
    cdef dict d
    if i >= n or depth > _MP_DEPTH:
        return _NO
    b = p[i]
    i += 1
    if b <= 0x7f:
        at[0] = i
        return <long>b
    if b >= 0xe0:
        at[0] = i
        return <long>(<signed char>b)
    if 0xa0 <= b <= 0xbf:
        return _mp_str(p, n, i, b & 0x1f, at, False)
    if 0x90 <= b <= 0x9f:
        ln = b & 0x0f
    elif 0x80 <= b <= 0x8f:
        ln = b & 0x0f
    elif b == 0xc0:
        at[0] = i
        return None
    elif b == 0xc2:
        at[0] = i
        return False
    elif b == 0xc3:
        at[0] = i
        return True
    elif b == 0xcc or b == 0xd0:
        if n - i < 1:
            return _NO
        at[0] = i + 1
        return <long>p[i] if b == 0xcc else <long>(<signed char>p[i])
    elif b == 0xcd or b == 0xd1:
        if n - i < 2:
            return _NO
        at[0] = i + 2
        return <long>_be16(p + i) if b == 0xcd else <long>(<short>_be16(p + i))
    elif b == 0xce or b == 0xd2:
        if n - i < 4:
            return _NO
        at[0] = i + 4
        return <long long>_be32(p + i) if b == 0xce else <long long>(<int>_be32(p + i))
    elif b == 0xcf or b == 0xd3:
        if n - i < 8:
            return _NO
        at[0] = i + 8
        return _be64(p + i) if b == 0xcf else <long long>_be64(p + i)
    elif b == 0xca:
        if n - i < 4:
            return _NO
        f4.u = _be32(p + i)
        at[0] = i + 4
        return <double>f4.f
    elif b == 0xcb:
        if n - i < 8:
            return _NO
        f8.u = _be64(p + i)
        at[0] = i + 8
        return f8.d
    elif b == 0xd9 or b == 0xc4:
        if n - i < 1:
            return _NO
        ln = p[i]
        i += 1
    elif b == 0xda or b == 0xc5 or b == 0xdc or b == 0xde:
        if n - i < 2:
            return _NO
        ln = _be16(p + i)
        i += 2
    elif b == 0xdb or b == 0xc6 or b == 0xdd or b == 0xdf:
        if n - i < 4:
            return _NO
        ln = _be32(p + i)
        i += 4
    else:
        return _NO  # ext types (and the unused 0xc1)
    if b == 0xd9 or b == 0xda or b == 0xdb:
        return _mp_str(p, n, i, ln, at, False)
    if b == 0xc4 or b == 0xc5 or b == 0xc6:
        if ln > n - i:
            return _NO
        at[0] = i + ln
        return PyBytes_FromStringAndSize(<const char*>p + i, ln)
    if ln > n - i:  # each element takes a byte at least: a count past the body is short
        return _NO
    at[0] = i
    if (0x90 <= b <= 0x9f) or b == 0xdc or b == 0xdd:
        lst = []
        for k in range(ln):
            v = _mp(p, n, at, depth + 1)
            if v is _NO:
                return _NO
            lst.append(v)
        return lst
    d = {}
    for k in range(ln):
        key = _mp_key(p, n, at)
        if key is _NO:
            return _NO
        v = _mp(p, n, at, depth + 1)
        if v is _NO:
            return _NO
        d[key] = v
    return d


cdef inline object _checked_envelope(cls, channel, seq, epoch, formats, id_, prev_id, meta, ts):
    """The ``cls`` envelope of these fields, or None when one has the wrong type."""
    if (
        type(seq) is not int
        or type(epoch) is not str
        or type(formats) is not dict
        or type(meta) is not dict
        or (id_ is not None and type(id_) is not str)
        or (prev_id is not None and type(prev_id) is not str)
        or (type(ts) is not float and type(ts) is not int)
    ):
        return None
    env = _new(cls)
    PyObject_GenericSetAttr(env, "channel", channel)
    PyObject_GenericSetAttr(env, "seq", seq)
    PyObject_GenericSetAttr(env, "epoch", epoch)
    PyObject_GenericSetAttr(env, "formats", formats)
    PyObject_GenericSetAttr(env, "id", id_)
    PyObject_GenericSetAttr(env, "prev_id", prev_id)
    PyObject_GenericSetAttr(env, "meta", meta)
    PyObject_GenericSetAttr(env, "ts", float(ts))
    return env


cdef object _envelope_fast(const char* data, Py_ssize_t n, object channel, object cls):
    """The envelope map ``data[:n]`` read field by field (no map dict built): the ``cls``
    envelope, None (a marker, or a field of the wrong type: ``_decode_envelope``'s rules), or
    ``_NO`` when the reader leaves the body to ``msgpack.unpackb``.  A repeated key keeps its
    last value and unknown keys are skipped, as reading them from the map would."""
    cdef const unsigned char* p = <const unsigned char*>data
    cdef Py_ssize_t at, ln, k
    cdef unsigned char b
    cdef bint marker = False
    if n < 1:
        return _NO
    b = p[0]
    if 0x80 <= b <= 0x8f:
        ln = b & 0x0f
        at = 1
    elif b == 0xde and n >= 3:
        ln = _be16(p + 1)
        at = 3
    else:
        return _NO
    seq = epoch = formats = id_ = prev_id = meta = ts = None
    for k in range(ln):
        key = _mp_key(p, n, &at)
        if key is _NO:
            return _NO
        v = _mp(p, n, &at, 1)
        if v is _NO:
            return _NO
        if key is S_SEQ:  # (map keys are interned, as these constants are)
            seq = v
        elif key is S_EPOCH:
            epoch = v
        elif key is S_FORMATS:
            formats = v
        elif key is S_ID:
            id_ = v
        elif key is S_PREV:
            prev_id = v
        elif key is S_META:
            meta = v
        elif key is S_TS:
            ts = v
        elif key is S_MARKER:
            marker = True
    if at != n:
        return _NO  # trailing bytes: msgpack.unpackb's error
    if marker:
        return None
    return _checked_envelope(cls, channel, seq, epoch, formats, id_, prev_id, meta, ts)


cdef object _decode_envelope(bytes frame, object cls):
    cdef const char* data = PyBytes_AS_STRING(frame)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
    cdef const char* sep = <const char*>memchr(data, 0, <size_t>n)
    cdef Py_ssize_t i
    if sep == NULL or sep == data:
        return None
    i = sep - data
    try:
        channel = PyUnicode_DecodeUTF8(data, i, NULL)
    except Exception:
        return None
    env = _envelope_fast(data + i + 1, n - i - 1, channel, cls)
    if env is not _NO:
        return env
    try:
        m = _unpackb(PyBytes_FromStringAndSize(data + i + 1, n - i - 1))
    except Exception:
        return None
    if type(m) is not dict:
        return None
    cdef dict d = <dict>m
    if S_MARKER in d:
        return None
    seq = _get(d, S_SEQ)
    epoch = _get(d, S_EPOCH)
    formats = _get(d, S_FORMATS)
    id_ = _get(d, S_ID)
    prev_id = _get(d, S_PREV)
    meta = _get(d, S_META)
    ts = _get(d, S_TS)
    return _checked_envelope(cls, channel, seq, epoch, formats, id_, prev_id, meta, ts)


def decode_envelopes(list frames, cls):
    """For each fan-out frame, the ``cls`` envelope it carries, or None (see ``_fanout_py``)."""
    cdef list out = []
    for frame in frames:
        if type(frame) is bytes:
            out.append(_decode_envelope(<bytes>frame, cls))
        else:
            out.append(None)
    return out


def first_topic(list frames):
    """See the pure twin."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(frames)
    cdef object f
    for i in range(n):
        f = <object>PyList_GET_ITEM(frames, i)
        if type(f) is not bytes:
            return i
        if PyBytes_GET_SIZE(f) > 0 and PyBytes_AS_STRING(f)[0] == 0:
            return i
    return -1


def first_none(list values):
    """See the pure twin."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(values)
    for i in range(n):
        if PyList_GET_ITEM(values, i) == <PyObject*>None:
            return i
    return -1


cdef inline void _untrack(object o):
    if PyObject_IS_GC(o):
        PyObject_GC_UnTrack(<void*>o)


def atom_pair(a, b):
    """See the pure twin: ``(a, b)``, untracked by the cyclic collector."""
    cdef tuple t = (a, b)
    PyObject_GC_UnTrack(<void*>t)
    return t


def retain(env):
    """Take a retained envelope out of the cyclic garbage collector's lists (see
    ``_fanout_py.retain``): the envelope, its ``formats`` dict and each format's dict."""
    _untrack(env)
    f = env.formats
    if type(f) is dict:
        for v in (<dict>f).values():
            if type(v) is dict:
                _untrack(v)
        _untrack(f)


# -- message_packets (the broker's Pushpin-style "message" stats packets) ----------------------

cdef dict _TRANSPORT_MODE = {"http-response": "response", "http-stream": "stream", "ws-message": "ws"}


cdef inline int _putdec(Buf* b, Py_ssize_t v) except -1:
    """``v`` (>= 0) in decimal."""
    cdef char tmp[24]
    cdef int n = 0
    if v == 0:
        return _put1(b, b"0"[0])
    while v > 0:
        tmp[23 - n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    return _put(b, &tmp[24 - n], n)


cdef inline int _puttn(Buf* b, const char* p, Py_ssize_t n) except -1:
    """A tnetstring string: ``n:<p>,``."""
    _putdec(b, n)
    _put1(b, b":"[0])
    _put(b, p, n)
    return _put1(b, b","[0])


cdef inline Py_ssize_t _declen(Py_ssize_t v):
    cdef Py_ssize_t n = 1
    while v >= 10:
        v //= 10
        n += 1
    return n


def message_packets(envs, live, dict subs, chan_subs, bytes head, dict transports):
    cdef list out = []
    cdef Buf b
    cdef Py_ssize_t count, clen = 0, tlen, ilen = 0, blen
    cdef const char* cp = NULL
    cdef const char* ip = NULL
    cdef bytes t_part
    cdef bint known
    cdef PyObject* found
    b.data = NULL
    b.len = b.cap = 0
    try:
        for env in envs:
            channel = env.channel
            if channel not in live:
                continue
            known = channel in chan_subs
            cp = NULL
            for transport in env.formats:
                if known:
                    mode = _TRANSPORT_MODE.get(transport, "")
                    found = PyDict_GetItemWithError(subs, (mode, channel))
                    if found == NULL:
                        continue
                    count = <object>found
                else:
                    count = 1
                if count <= 0:
                    continue
                if cp == NULL:
                    cp = PyUnicode_AsUTF8AndSize(channel, &clen)
                t_part = transports.get(transport)
                if t_part is None:
                    tb = transport.encode("utf-8")
                    t_part = transports[transport] = b"9:transport,%d:%s," % (len(tb), tb)
                ident = env.id
                if ident is not None:
                    ip = PyUnicode_AsUTF8AndSize(ident, &ilen)
                # body: head, 7:channel, <tn channel>, t_part, 5:count, <n>:<count>#, item-id
                blen = (PyBytes_GET_SIZE(head) + 10 + _declen(clen) + 2 + clen
                        + PyBytes_GET_SIZE(t_part) + 8 + _declen(_declen(count)) + 2
                        + _declen(count))
                if ident is not None:
                    blen += 10 + _declen(ilen) + 2 + ilen
                b.len = 0
                _put(&b, b"message T", 9)
                _putdec(&b, blen)
                _put1(&b, b":"[0])
                _putb(&b, head)
                _put(&b, b"7:channel,", 10)
                _puttn(&b, cp, clen)
                _putb(&b, t_part)
                _put(&b, b"5:count,", 8)
                _putdec(&b, _declen(count))
                _put1(&b, b":"[0])
                _putdec(&b, count)
                _put1(&b, b"#"[0])
                if ident is not None:
                    _put(&b, b"7:item-id,", 10)
                    _puttn(&b, ip, ilen)
                _put1(&b, b"}"[0])
                out.append(PyBytes_FromStringAndSize(b.data, b.len))
    finally:
        free(b.data)
    return out
