# cython: language_level=3
"""The usual published item, normalised fast (compiled twin of ``_items_py``; same API and
behaviour, see there)."""
from cpython.object cimport PyObject_GenericSetAttr

cdef object _MISSING = object()
import re
# ids the complete parser might refuse go to it (as in the pure twin)
cdef object _ID_BAD = re.compile("[\x00-\x1f\x7f]").search
cdef Py_ssize_t MAX_FAST_ID_CHARS = 256


cdef inline bint _id_ok(object s):
    """Short enough, and no control character (what ``_ID_BAD`` finds), read in C."""
    cdef Py_UCS4 ch
    if len(<str>s) > MAX_FAST_ID_CHARS:
        return False
    for ch in <str>s:
        if ch < 0x20 or ch == 0x7f:
            return False
    return True
cdef object _new = object.__new__
# the meta of every item published without one (the pure twin's NO_META)
cdef dict _NO_META = {}
NO_META = _NO_META


cdef class _Keys:
    cdef object channel, id, prev, formats, meta, size, noseq
    cdef object action, content, content_bin, filters, type_, code, reason, headers, body
    cdef object body_bin, hr, hs, ws, send
    cdef bint json

    def __init__(self, bint json):
        k = (lambda s: s) if json else (lambda s: s.encode())
        self.json = json
        self.channel, self.id, self.prev, self.formats = k("channel"), k("id"), k("prev-id"), k("formats")
        self.meta, self.size, self.noseq = k("meta"), k("size"), k("no-seq")
        self.action, self.content, self.content_bin = k("action"), k("content"), k("content-bin")
        self.filters, self.type_, self.code = k("content-filters"), k("type"), k("code")
        self.reason, self.headers, self.body, self.body_bin = k("reason"), k("headers"), k("body"), k("body-bin")
        self.hr, self.hs, self.ws = k("http-response"), k("http-stream"), k("ws-message")
        self.send = k("send")


cdef _Keys _KJ = _Keys(True)
cdef _Keys _KT = _Keys(False)


cdef inline object _text(object v):
    if type(v) is str:
        return v
    if type(v) is bytes:
        try:
            return (<bytes>v).decode("utf-8")
        except UnicodeDecodeError:
            return _MISSING
    return _MISSING


cdef object _payload(dict f, object key, _Keys K, int kind):
    """The send-format's bytes; kind 0 http-stream, 1 http-response, 2 ws-message."""
    cdef object a = f.get(K.action)
    if a is not None and a != K.send:
        return _MISSING
    if f.get(K.filters) is not None:
        return _MISSING
    if kind == 0:
        if K.json and f.get(K.content_bin) is not None:
            return _MISSING
    elif kind == 1:
        if f.get(K.code) is not None or f.get(K.reason) is not None or f.get(K.headers) is not None:
            return _MISSING
        if K.json and f.get(K.body_bin) is not None:
            return _MISSING
    else:
        if f.get(K.type_) is not None or f.get(K.content_bin) is not None:
            return _MISSING
    c = f.get(key)
    if type(c) is str:
        return (<str>c).encode("utf-8")
    if type(c) is bytes:
        return c
    return _MISSING


def normalise_item(dict value, channel, bint json, item_cls):
    cdef _Keys K = _KJ if json else _KT
    cdef dict vformats, formats, meta, fd
    cdef bint legacy
    if not channel:
        channel = value.get(K.channel)
        if type(channel) is not str:
            channel = _text(channel)
            if channel is _MISSING:
                return None
    if type(channel) is not str:
        return None
    if not channel or len(<str>channel) > 256 or "\x00" in <str>channel:
        return None
    item_id = value.get(K.id)
    if item_id is not None:
        if type(item_id) is not str:
            item_id = _text(item_id)
            if item_id is _MISSING:
                return None
        if not _id_ok(item_id):
            return None
        if not item_id:
            item_id = None
    prev_id = value.get(K.prev)
    if prev_id is not None:
        if type(prev_id) is not str:
            prev_id = _text(prev_id)
            if prev_id is _MISSING:
                return None
        if not _id_ok(prev_id):
            return None
        if not prev_id:
            prev_id = None
    vf = value.get(K.formats)
    legacy = vf is None
    if legacy:
        vformats = value
    elif type(vf) is not dict:
        return None
    else:
        vformats = <dict>vf
    formats = {}
    f = vformats.get(K.hr, _MISSING)
    if f is not _MISSING and not (legacy and f is None):
        if type(f) is not dict:
            return None
        body = _payload(<dict>f, K.body, K, 1)
        if body is _MISSING:
            return None
        formats["http-response"] = {"action": "send", "code": 200, "reason": "OK",
                                    "headers": [], "body": body, "body-patch": None}
    f = vformats.get(K.hs, _MISSING)
    if f is not _MISSING and not (legacy and f is None):
        if type(f) is not dict:
            return None
        content = _payload(<dict>f, K.content, K, 0)
        if content is _MISSING:
            return None
        formats["http-stream"] = {"action": "send", "content": content}
    f = vformats.get(K.ws, _MISSING)
    if f is not _MISSING and not (legacy and f is None):
        if type(f) is not dict:
            return None
        content = _payload(<dict>f, K.content, K, 2)
        if content is _MISSING:
            return None
        formats["ws-message"] = {"action": "send", "type": "text", "content": content,
                                 "code": None, "reason": ""}
    if not formats:
        return None
    vmeta = value.get(K.meta)
    if vmeta is None:
        meta = _NO_META
    elif json and type(vmeta) is dict:
        for mk, mv in (<dict>vmeta).items():
            if type(mk) is not str or type(mv) is not str:
                return None
        meta = (<dict>vmeta).copy()
    else:
        return None
    if value.get(K.size) is not None:
        return None
    no_seq = value.get(K.noseq)
    if no_seq is None:
        no_seq = False
    elif type(no_seq) is not bool:
        return None
    item = _new(item_cls)
    PyObject_GenericSetAttr(item, "channel", channel)
    PyObject_GenericSetAttr(item, "formats", formats)
    PyObject_GenericSetAttr(item, "id", item_id)
    PyObject_GenericSetAttr(item, "prev_id", prev_id)
    PyObject_GenericSetAttr(item, "meta", meta)
    PyObject_GenericSetAttr(item, "no_seq", no_seq)
    return item


# -- B frames: the usual items straight from the msgpack bytes -----------------------------------
#
# ``unpack_batch`` first tries a direct reader that accepts only this grammar: an array of maps
# with distinct str keys among channel, id, prev-id, formats, meta, no-seq; channel (and id,
# prev-id) a str or bin of valid UTF-8, id/prev-id also nil; formats a non-empty map of distinct
# http-response / http-stream / ws-message, each a map of ``action`` (nil or "send") and its
# payload (``body`` / ``content``: str or bin); meta nil or a map of distinct str keys to str;
# no-seq nil or a bool; nothing after the array.  Every such frame decodes (msgpack) to items
# that normalise_item takes, and the reader builds exactly those items.  Any other frame: the
# pure twin's way (msgpack.unpackb, then normalise_item per map), so results and errors match.

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp
import msgpack

cdef object _msgpack_unpackb = msgpack.unpackb


cdef struct Cur:
    const unsigned char* p
    Py_ssize_t n
    Py_ssize_t pos
    const unsigned char* ch  # the last channel's bytes (in p), -1 length before the first
    Py_ssize_t ch_len


cdef inline Py_ssize_t _be(Cur* c, int nbytes):
    """Read an unsigned big-endian int of ``nbytes``; -1 past the end."""
    cdef Py_ssize_t v = 0
    cdef int i
    if c.pos + nbytes > c.n:
        return -1
    for i in range(nbytes):
        v = (v << 8) | c.p[c.pos + i]
    c.pos += nbytes
    return v


cdef inline Py_ssize_t _container(Cur* c, unsigned char fix, unsigned char t16, unsigned char t32):
    """A map (fix 0x80) or array (fix 0x90) header: its length, or -1."""
    cdef unsigned char b
    if c.pos >= c.n:
        return -1
    b = c.p[c.pos]
    c.pos += 1
    if (b & 0xf0) == fix:
        return b & 0x0f
    if b == t16:
        return _be(c, 2)
    if b == t32:
        return _be(c, 4)
    return -1


cdef inline int _span(Cur* c, bint allow_bin, const unsigned char** s, Py_ssize_t* ln,
                      bint* is_str):
    """A str (or, with ``allow_bin``, a bin): its bytes; 1 for nil; -1 for anything else."""
    cdef unsigned char b
    cdef Py_ssize_t l
    if c.pos >= c.n:
        return -1
    b = c.p[c.pos]
    c.pos += 1
    is_str[0] = True
    if (b & 0xe0) == 0xa0:
        l = b & 0x1f
    elif b == 0xd9:
        l = _be(c, 1)
    elif b == 0xda:
        l = _be(c, 2)
    elif b == 0xdb:
        l = _be(c, 4)
    elif b == 0xc0:
        return 1
    elif allow_bin and (b == 0xc4 or b == 0xc5 or b == 0xc6):
        is_str[0] = False
        l = _be(c, 1 if b == 0xc4 else (2 if b == 0xc5 else 4))
    else:
        return -1
    if l < 0 or c.pos + l > c.n:
        return -1
    s[0] = c.p + c.pos
    ln[0] = l
    c.pos += l
    return 0


cdef inline bint _ascii(const unsigned char* s, Py_ssize_t n):
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] & 0x80:
            return False
    return True


cdef object _utf8(const unsigned char* s, Py_ssize_t n):
    """The text of UTF-8 bytes (strict, as msgpack decodes str), or None."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
    except UnicodeDecodeError:
        return None


cdef inline bint _key(const unsigned char* s, Py_ssize_t n, const char* name, Py_ssize_t ln):
    return n == ln and memcmp(s, name, ln) == 0


cdef object _text_field(Cur* c, bint nil_ok):
    """channel / id / prev-id: str or bin of UTF-8 -> str; nil -> "" when allowed; else None."""
    cdef const unsigned char* s
    cdef Py_ssize_t l
    cdef bint is_str
    cdef int r = _span(c, True, &s, &l, &is_str)
    if r == 1:
        return "" if nil_ok else None
    if r < 0:
        return None
    return _utf8(s, l)


cdef object _payload_field(Cur* c, bint body):
    """A send format's map: {action: nil | "send", body|content: str | bin} -> the bytes, or
    None."""
    cdef Py_ssize_t m = _container(c, 0x80, 0xde, 0xdf), j, l
    cdef const unsigned char* s
    cdef bint is_str, seen_action = False
    cdef int r
    payload = None
    if m <= 0:
        return None
    for j in range(m):
        if _span(c, False, &s, &l, &is_str) != 0:
            return None
        if _key(s, l, b"action", 6):
            if seen_action:
                return None
            seen_action = True
            r = _span(c, False, &s, &l, &is_str)
            if r < 0 or (r == 0 and not _key(s, l, b"send", 4)):
                return None
        elif (_key(s, l, b"body", 4) if body else _key(s, l, b"content", 7)) and payload is None:
            if _span(c, True, &s, &l, &is_str) != 0:
                return None
            if is_str and not _ascii(s, l) and _utf8(s, l) is None:
                return None
            payload = PyBytes_FromStringAndSize(<const char*>s, l)
        else:
            return None
    return payload


cdef object _fast_item(Cur* c, object item_cls, list last_channel):
    cdef Py_ssize_t m = _container(c, 0x80, 0xde, 0xdf), j, l, fm, k, mm
    cdef const unsigned char* s
    cdef const unsigned char* fs
    cdef Py_ssize_t fl
    cdef bint is_str
    cdef int seen = 0, bit, kind
    cdef int r
    cdef dict meta = None
    channel = item_id = prev_id = None
    hr = hs = ws = None
    no_seq = False
    if m < 0:
        return None
    for j in range(m):
        if _span(c, False, &s, &l, &is_str) != 0:
            return None
        if _key(s, l, b"channel", 7):
            bit = 1
            r = _span(c, True, &fs, &fl, &is_str)
            if r != 0:
                return None
            if fl == c.ch_len and memcmp(fs, c.ch, fl) == 0:
                channel = last_channel[0]  # the same name as the item before: the same str
            else:
                channel = _utf8(fs, fl)
                if channel is None:
                    return None
                c.ch = fs
                c.ch_len = fl
                last_channel[0] = channel
        elif _key(s, l, b"id", 2):
            bit = 2
            item_id = _text_field(c, True)
            if item_id is None:
                return None
            if type(item_id) is str and not _id_ok(item_id):
                return None
        elif _key(s, l, b"prev-id", 7):
            bit = 4
            prev_id = _text_field(c, True)
            if prev_id is None:
                return None
            if type(prev_id) is str and not _id_ok(prev_id):
                return None
        elif _key(s, l, b"formats", 7):
            bit = 8
            fm = _container(c, 0x80, 0xde, 0xdf)
            if fm <= 0:
                return None
            for k in range(fm):
                if _span(c, False, &fs, &fl, &is_str) != 0:
                    return None
                if _key(fs, fl, b"http-response", 13) and hr is None:
                    hr = _payload_field(c, True)
                    if hr is None:
                        return None
                elif _key(fs, fl, b"http-stream", 11) and hs is None:
                    hs = _payload_field(c, False)
                    if hs is None:
                        return None
                elif _key(fs, fl, b"ws-message", 10) and ws is None:
                    ws = _payload_field(c, False)
                    if ws is None:
                        return None
                else:
                    return None
        elif _key(s, l, b"meta", 4):
            bit = 16
            if c.pos < c.n and c.p[c.pos] == 0xc0:
                c.pos += 1
            else:
                mm = _container(c, 0x80, 0xde, 0xdf)
                if mm < 0:
                    return None
                meta = {}
                for k in range(mm):
                    if _span(c, False, &fs, &fl, &is_str) != 0:
                        return None
                    mk = _utf8(fs, fl)
                    if mk is None or _span(c, False, &fs, &fl, &is_str) != 0:
                        return None
                    mv = _utf8(fs, fl)
                    if mv is None:
                        return None
                    meta[mk] = mv
                if len(meta) != mm:
                    return None  # repeated keys
        elif _key(s, l, b"no-seq", 6):
            bit = 32
            if c.pos >= c.n:
                return None
            kind = c.p[c.pos]
            c.pos += 1
            if kind == 0xc3:
                no_seq = True
            elif kind != 0xc2 and kind != 0xc0:
                return None
        else:
            return None
        if seen & bit:
            return None
        seen |= bit
    if not (seen & 1) or not (seen & 8):
        return None
    if not channel or len(<str>channel) > 256 or "\x00" in <str>channel:
        return None
    formats = {}
    if hr is not None:
        formats["http-response"] = {"action": "send", "code": 200, "reason": "OK",
                                    "headers": [], "body": hr, "body-patch": None}
    if hs is not None:
        formats["http-stream"] = {"action": "send", "content": hs}
    if ws is not None:
        formats["ws-message"] = {"action": "send", "type": "text", "content": ws,
                                 "code": None, "reason": ""}
    item = _new(item_cls)
    PyObject_GenericSetAttr(item, "channel", channel)
    PyObject_GenericSetAttr(item, "formats", formats)
    PyObject_GenericSetAttr(item, "id", item_id or None)
    PyObject_GenericSetAttr(item, "prev_id", prev_id or None)
    PyObject_GenericSetAttr(item, "meta", _NO_META if meta is None else meta)
    PyObject_GenericSetAttr(item, "no_seq", no_seq)
    return item


cdef object _fast_batch(const unsigned char* p, Py_ssize_t n, object item_cls):
    cdef Cur c
    cdef Py_ssize_t count, i
    cdef list out = []
    cdef list last_channel = [None]  # the str of c.ch
    c.p = p
    c.n = n
    c.pos = 0
    c.ch = NULL
    c.ch_len = -1
    count = _container(&c, 0x90, 0xdc, 0xdd)
    if count < 0:
        return None
    for i in range(count):
        item = _fast_item(&c, item_cls, last_channel)
        if item is None:
            return None
        out.append(item)
    if c.pos != n:
        return None
    return out


def unpack_batch(data, item_cls):
    if type(data) is bytes:
        items = _fast_batch(<const unsigned char*><char*>data, len(<bytes>data), item_cls)
        if items is not None:
            return items
    values = _msgpack_unpackb(data, raw=False)
    if type(values) is list:
        for i, value in enumerate(<list>values):
            if type(value) is dict:
                item = normalise_item(value, None, True, item_cls)
                if item is not None:
                    (<list>values)[i] = item
    return values


def first_hint(items):
    """The pure twin's: the index of the first item with a ``hint`` format, or -1."""
    cdef Py_ssize_t i = 0
    cdef object formats, f
    for item in items:
        formats = item.formats
        for f in ((<dict>formats).values() if type(formats) is dict else formats.values()):
            if isinstance(f, dict):
                if (<dict>f).get("action") == "hint" if type(f) is dict else f.get("action") == "hint":
                    return i
        i += 1
    return -1


cdef bint _digit_run(const unsigned char* b, Py_ssize_t size, Py_ssize_t n):
    """``n`` or more ASCII digits in a row in ``b[:size]`` (n >= 1)."""
    cdef Py_ssize_t i, lo, hi
    # a run of n digits covers one of every n-th positions: look only there, then measure
    i = n - 1
    while i < size:
        if b[i] < 48 or b[i] > 57:
            i += n
            continue
        lo = i
        while lo > 0 and 48 <= b[lo - 1] <= 57:
            lo -= 1
        hi = i
        while hi + 1 < size and 48 <= b[hi + 1] <= 57:
            hi += 1
        if hi - lo + 1 >= n:
            return True
        i = hi + 1 + n  # b[hi + 1] is not a digit: the next run ends at hi + 1 + n or later
    return False


def digit_run(data, Py_ssize_t n):
    """True when ``data`` (bytes-like) holds ``n`` or more ASCII digits in a row."""
    cdef const unsigned char[::1] b = data
    if n <= 0:
        return True
    if b.shape[0] == 0:
        return False
    return _digit_run(&b[0], b.shape[0], n)


def payload_bytes(formats):
    """The payload bytes of a formats map (the pure twin's)."""
    cdef Py_ssize_t n = 0
    cdef object data
    for fmt in ((<dict>formats).values() if type(formats) is dict else formats.values()):
        if type(fmt) is dict:  # (the usual case: the dict's own get, no attribute lookup)
            data = (<dict>fmt).get("content")
            if data is None:
                data = (<dict>fmt).get("body")
        else:
            data = fmt.get("content")
            if data is None:
                data = fmt.get("body")
        if data is not None:
            n += len(data)
    return n


# -- parse_j_frames: a PULL read's usual frames (J + a JSON object) parsed in one loop ---------

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr


cdef object _NOT_YET = object()


cdef inline bint _surrogate_escape(const unsigned char* p, Py_ssize_t n):
    """A backslash, ``u`` or ``U``, then ``d`` or ``D`` somewhere (the pure twin's test)."""
    cdef Py_ssize_t i = 0
    cdef const unsigned char* q
    while i < n - 2:
        q = <const unsigned char*>memchr(p + i, 92, n - 2 - i)
        if q == NULL:
            return False
        i = q - p
        if (p[i + 1] == 117 or p[i + 1] == 85) and (p[i + 2] == 100 or p[i + 2] == 68):
            return True
        i += 1
    return False


def parse_j_frames(list frames, scan_once, item_cls, Py_ssize_t max_bytes, slow, loads=None,
                   Py_ssize_t long_digits=19):
    """See the pure twin."""
    cdef list items = [], errors = []
    cdef const unsigned char* p
    cdef Py_ssize_t n, end
    cdef object text, value, item
    for frame in frames:
        if type(frame) is bytes:
            p = <const unsigned char*>PyBytes_AS_STRING(frame)
            n = PyBytes_GET_SIZE(frame)
            if (n >= 2 and p[0] == 74 and p[1] == 123
                    and memchr(p + 2, 0, min(3, n - 2)) == NULL
                    and not _surrogate_escape(p, n)):
                value = _NOT_YET
                if loads is not None and not _digit_run(p + 1, n - 1, long_digits):
                    try:
                        value = loads(frame[1:])
                    except ValueError:  # refused: the scanner's way decides
                        value = _NOT_YET
                if value is _NOT_YET:
                    value = None
                    try:
                        text = PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
                        value, end = scan_once(text, 1)
                        if end != len(<str>text) and (<str>text)[end:].strip(" \t\n\r"):
                            value = None
                    except (StopIteration, ValueError, RecursionError):
                        value = None
                if type(value) is dict:
                    item = normalise_item(<dict>value, None, True, item_cls)
                    if item is not None and payload_bytes(item.formats) <= max_bytes:
                        items.append(item)
                        continue
        parsed, bad = slow(frame)
        items += parsed
        errors += bad
    return items, errors
