# cython: language_level=3
"""Compiled twin of ``_marks_py`` (see there): a heartbeat's trailing positions, walked once
in the msgpack bytes, every entry checked as ``broker.wire.decode_marks`` checks it, and only
the positions of held channels not yet delivered up to them built as Python objects."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError
from cpython.long cimport PyLong_FromUnsignedLongLong, PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject, PyObject_RichCompareBool, Py_LE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy

from broker.errors import RemoteProtocolError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object u, Py_ssize_t* size) except NULL
    bint PyUnicode_CheckExact(object o)
    bint PyLong_CheckExact(object o)
    object PyUnicode_New(Py_ssize_t size, unsigned int maxchar)
    void* PyUnicode_DATA(object o)
    ctypedef struct PyASCIIObject:
        Py_hash_t hash
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    ctypedef struct PyTypeObject:
        pass
    PyTypeObject PyMemberDescr_Type
    PyTypeObject* Py_TYPE(object o)
    Py_ssize_t Py_REFCNT(object o)
    object PyObject_GenericGetAttr(object o, object name)

cdef extern from "structmember.h":
    int T_OBJECT_EX
    int READONLY

cdef str A_STATE = "state"
cdef str A_EPOCH = "epoch"
cdef str A_LAST_SEQ = "last_seq"

# The track type whose three attributes are plain slots (``__slots__``), read at their
# offsets: a track is read for every held position of every heartbeat.  Another type, or one
# whose attributes are not plain slots, is read with getattr.
cdef object _slot_type = None  # the type the offsets are for (kept alive here)
cdef bint _slot_ok = False
cdef Py_ssize_t _off_state = 0, _off_epoch = 0, _off_last = 0

# Probe keys for the ``tracks`` lookup of an ASCII channel: one str per length, written over
# for each position (its hash reset), so a channel not held costs no object.  A probe is
# only reused while nothing but this table refers to it.
cdef enum:
    PROBE_MAX = 64
cdef list _probes = [None] * (PROBE_MAX + 1)


cdef object _bad(str why):
    return RemoteProtocolError("bad marks: " + why)


cdef inline uint64_t _be(const unsigned char* p, int k) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(k):
        v = (v << 8) | p[i]
    return v


cdef Py_ssize_t _array(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos) except -2:
    """An array header at ``pos``: its length (``pos`` moved past it), or -1: not an array."""
    cdef Py_ssize_t i = pos[0]
    cdef unsigned char c
    if i >= n:
        raise _bad("truncated")
    c = p[i]
    if 0x90 <= c <= 0x9F:
        pos[0] = i + 1
        return c & 0x0F
    if c == 0xDC:
        if n - i < 3:
            raise _bad("truncated")
        pos[0] = i + 3
        return <Py_ssize_t>_be(p + i + 1, 2)
    if c == 0xDD:
        if n - i < 5:
            raise _bad("truncated")
        pos[0] = i + 5
        return <Py_ssize_t>_be(p + i + 1, 4)
    return -1


cdef Py_ssize_t _str(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos) except -1:
    """A str at ``pos``: its length, ``pos`` moved to its first byte (the caller skips it)."""
    cdef Py_ssize_t i = pos[0], k, h
    cdef unsigned char c
    if i >= n:
        raise _bad("truncated")
    c = p[i]
    if 0xA0 <= c <= 0xBF:
        h, k = 1, c & 0x1F
    elif c == 0xD9:
        if n - i < 2:
            raise _bad("truncated")
        h, k = 2, p[i + 1]
    elif c == 0xDA:
        if n - i < 3:
            raise _bad("truncated")
        h, k = 3, <Py_ssize_t>_be(p + i + 1, 2)
    elif c == 0xDB:
        if n - i < 5:
            raise _bad("truncated")
        h, k = 5, <Py_ssize_t>_be(p + i + 1, 4)
    else:
        raise _bad("bad entry: not a str")
    if k > n - i - h:
        raise _bad("truncated")
    pos[0] = i + h
    return k


cdef uint64_t _count(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos) except? 0xFFFFFFFFFFFFFFFF:
    """A msgpack int >= 0 at ``pos`` (any width, signed or not); anything else raises."""
    cdef Py_ssize_t i = pos[0]
    cdef unsigned char c
    cdef int k
    cdef uint64_t v
    if i >= n:
        raise _bad("truncated")
    c = p[i]
    if c <= 0x7F:
        pos[0] = i + 1
        return c
    if 0xCC <= c <= 0xCF:  # uint 8/16/32/64
        k = 1 << (c - 0xCC)
    elif 0xD0 <= c <= 0xD3:  # int 8/16/32/64: negative values are refused
        k = 1 << (c - 0xD0)
    else:
        raise _bad("bad entry: last_seq not an int >= 0")
    if n - i - 1 < k:
        raise _bad("truncated")
    if c >= 0xD0 and p[i + 1] & 0x80:
        raise _bad("bad entry: negative last_seq")
    v = _be(p + i + 1, k)
    pos[0] = i + 1 + k
    return v


cdef inline bint _ascii(const unsigned char* s, Py_ssize_t k) noexcept:
    cdef Py_ssize_t j
    for j in range(k):
        if s[j] & 0x80:
            return False
    return True


cdef object _text(const unsigned char* s, Py_ssize_t k):
    try:
        return PyUnicode_DecodeUTF8(<const char*>s, k, NULL)
    except UnicodeDecodeError as exc:
        raise _bad(f"bad entry: {exc}") from None


cdef Py_ssize_t _slot_offset(object tp, str name) except -2:
    """The offset of attribute ``name`` of ``tp``'s instances when it is a plain object slot,
    else -1."""
    d = getattr(tp, name, None)
    if d is None or Py_TYPE(d) != &PyMemberDescr_Type:
        return -1
    cdef PyMemberDef* m = (<PyMemberDescrObject*><PyObject*>d).d_member
    if m.type != T_OBJECT_EX or m.offset <= 0:
        return -1
    return m.offset


cdef inline bint _slots(object t) except -1:
    """Whether ``t``'s attributes are read at the cached slot offsets (computed for a new
    type: its class's member descriptors, and the generic attribute lookup)."""
    global _slot_type, _slot_ok, _off_state, _off_epoch, _off_last
    if Py_TYPE(t) == <PyTypeObject*>_slot_type:
        return _slot_ok
    tp = type(t)
    _slot_type = tp
    _off_state = _slot_offset(tp, A_STATE)
    _off_epoch = _slot_offset(tp, A_EPOCH)
    _off_last = _slot_offset(tp, A_LAST_SEQ)
    _slot_ok = (
        _off_state > 0
        and _off_epoch > 0
        and _off_last > 0
        and tp.__getattribute__ is object.__getattribute__
    )
    return _slot_ok


cdef bint _current(object t, object live, const unsigned char* ep, Py_ssize_t ep_len, uint64_t seq) except -1:
    """Whether track ``t`` is ``live``, in the position's epoch and delivered up to ``seq``
    (``_marks_py``'s test, exactly)."""
    cdef Py_ssize_t tlen
    cdef const char* tep
    cdef int overflow = 0
    cdef long long last
    cdef PyObject* slot
    if _slots(t):
        slot = (<PyObject**>((<char*><PyObject*>t) + _off_state))[0]
        if slot == NULL or (<object>slot) is not live:
            return False if slot != NULL else getattr(t, A_STATE) is live
        slot = (<PyObject**>((<char*><PyObject*>t) + _off_epoch))[0]
        te = <object>slot if slot != NULL else getattr(t, A_EPOCH)
    else:
        if getattr(t, A_STATE) is not live:
            return False
        te = getattr(t, A_EPOCH)
    if PyUnicode_CheckExact(te):
        tep = PyUnicode_AsUTF8AndSize(te, &tlen)
        if tlen != ep_len or memcmp(tep, ep, <size_t>ep_len) != 0:
            return False
    elif not (_text(ep, ep_len) == te):
        return False
    if _slot_ok and Py_TYPE(t) == <PyTypeObject*>_slot_type:
        slot = (<PyObject**>((<char*><PyObject*>t) + _off_last))[0]
        tl = <object>slot if slot != NULL else getattr(t, A_LAST_SEQ)
    else:
        tl = getattr(t, A_LAST_SEQ)
    if PyLong_CheckExact(tl):
        last = PyLong_AsLongLongAndOverflow(tl, &overflow)
        if overflow == 0:
            return last >= 0 and seq <= <uint64_t>last
    return PyObject_RichCompareBool(PyLong_FromUnsignedLongLong(seq), tl, Py_LE) == 1


def held_marks(bytes data not None, dict tracks not None, live):
    """``(count, selected)``: see ``_marks_py.held_marks``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0, count, i
    cdef Py_ssize_t ch_len, ep_len
    cdef const unsigned char* ch
    cdef const unsigned char* ep
    cdef const unsigned char* last_ep = NULL
    cdef Py_ssize_t last_ep_len = 0
    cdef uint64_t seq
    cdef PyObject* found
    cdef list out = []
    cdef object last_ep_str = None
    cdef object probe
    count = _array(p, n, &pos)
    if count < 0:
        raise _bad("not an array")
    for i in range(count):
        if _array(p, n, &pos) != 3:
            raise _bad("bad entry: not an array of 3")
        ch_len = _str(p, n, &pos)
        ch = p + pos
        pos += ch_len
        ep_len = _str(p, n, &pos)
        ep = p + pos
        pos += ep_len
        seq = _count(p, n, &pos)
        if ch_len == 0:
            raise _bad("bad entry: empty channel")
        if memchr(ch, 0, <size_t>ch_len) != NULL:
            raise _bad("bad entry: NUL in channel")
        if not _ascii(ep, ep_len):
            _text(ep, ep_len)  # checked: valid UTF-8
        if ch_len <= PROBE_MAX and _ascii(ch, ch_len):
            probe = _probes[ch_len]
            if probe is None or Py_REFCNT(probe) != 2:  # this table's and ``probe``'s
                probe = PyUnicode_New(ch_len, 127)
                _probes[ch_len] = probe
            memcpy(PyUnicode_DATA(probe), ch, <size_t>ch_len)
            (<PyASCIIObject*><PyObject*>probe).hash = -1
            found = PyDict_GetItemWithError(tracks, probe)
            if found == NULL:
                continue
            if _current(<object>found, live, ep, ep_len, seq):
                continue
            channel = _text(ch, ch_len)
        else:
            channel = _text(ch, ch_len)  # checks it too
            found = PyDict_GetItemWithError(tracks, channel)
            if found == NULL:
                continue
            if _current(<object>found, live, ep, ep_len, seq):
                continue
        if last_ep != NULL and last_ep_len == ep_len and memcmp(last_ep, ep, <size_t>ep_len) == 0:
            epoch = last_ep_str
        else:
            epoch = _text(ep, ep_len)
            last_ep, last_ep_len, last_ep_str = ep, ep_len, epoch
        out.append((channel, epoch, PyLong_FromUnsignedLongLong(seq)))
    if pos != n:
        raise _bad("extra data after the array")
    return count, out
