# cython: language_level=3
"""One message to many sessions, one pass each (compiled twin of ``_deliver_py``; same API
and behaviour, see there).

The sessions are the edge's Python objects: their attributes are read and set through the
usual attribute protocol (slots), so a subclass or a changed class behaves as in the pure
twin.  What it saves over ``Deliverer.deliver``'s loop plus ``write_many`` is the second pass
over every session (a pending map entry, a list and a tuple per session, every session read
again): a delivery's user-space cost is mostly the cache misses of reading the session
objects, not the interpreter (perf, bench/RESULTS.md).  Sends use send(2) with MSG_DONTWAIT |
MSG_NOSIGNAL as ``_sendmany_c`` does.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport PyObject
from libc.errno cimport errno, EAGAIN, EINTR

cdef extern from "sys/socket.h" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    int PyDict_Contains(object d, object key) except -1

from broker.histogram import IntHistogram as _IntHistogram

cdef enum:
    _LAT_BOUNDS = 32  # a latency histogram with more bounds is observed per message


cdef inline object _dget(dict d, str key):
    cdef PyObject* p = PyDict_GetItemWithError(d, key)
    return None if p == NULL else <object>p


cdef inline bint _has(object fmt, str key) except -1:
    """``key in fmt`` (a format is a dict: looked up directly)."""
    if type(fmt) is dict:
        return PyDict_Contains(fmt, key) == 1
    return key in fmt


cdef inline bint _sends(object fmt) except -1:
    """``fmt.get("action", "send") == "send"``."""
    cdef PyObject* p
    if type(fmt) is dict:
        p = PyDict_GetItemWithError(fmt, "action")
        return p == NULL or (<object>p) == "send"
    return fmt.get("action", "send") == "send"


cdef class SessionCore:
    """The fields one delivery reads and writes, as C fields of the sessions' base class.

    ``edge.sessionstate.Session`` derives from it (through ``_speedups.SessionCore``), so
    ``send_plain`` reads them at fixed offsets instead of through the attribute protocol
    (a type lookup and a slot descriptor per field: most of a broadcast's user-space time).
    Python code sees ordinary attributes.  Unset, they are None, 0, 0.0 or False, as in the
    pure twin.

    A session's cursors (channel -> cursor of the last message delivered on it) are kept as
    the first channel's in two fields (``cursor_ch``, ``cursor_at``: most sessions have one
    channel) and the others in ``cursor_more`` (None until needed): a delivery writes a field
    of the object it already reads, not a dict of its own.  ``set_cursor``, ``cursor_of`` and
    ``cursors`` are the API.
    """

    cdef public object state
    cdef public object track
    cdef public object filters
    cdef public object cursor_ch
    cdef public object cursor_at
    cdef public dict cursor_more
    cdef public object crypt
    cdef public object buf
    cdef public object deflate
    cdef public Py_ssize_t sent
    cdef public double last_out
    cdef public int fd
    cdef public bint chunked
    cdef public bint writing

    cpdef set_cursor(self, str channel, object cursor):
        """``channel``'s cursor is now ``cursor``."""
        ch0 = self.cursor_ch
        if ch0 is None or ch0 is channel or ch0 == channel:
            self.cursor_ch = channel
            self.cursor_at = cursor
        elif self.cursor_more is None:
            self.cursor_more = {channel: cursor}
        else:
            self.cursor_more[channel] = cursor

    def cursor_of(self, str channel):
        """``channel``'s cursor, or None when nothing was delivered on it."""
        ch0 = self.cursor_ch
        if ch0 is not None and (ch0 is channel or ch0 == channel):
            return self.cursor_at
        if self.cursor_more is not None:
            return self.cursor_more.get(channel)
        return None

    def cursors(self):
        """A new dict of every channel's cursor, in the order they were first set."""
        out = {} if self.cursor_ch is None else {self.cursor_ch: self.cursor_at}
        if self.cursor_more:
            out.update(self.cursor_more)
        return out


cdef inline int _set_cursor(SessionCore c, str channel, object cursor) except -1:
    """``SessionCore.set_cursor``, its common case inline."""
    ch0 = c.cursor_ch
    if ch0 is channel or (ch0 is not None and ch0 == channel):
        c.cursor_at = cursor
    else:
        c.set_cursor(channel, cursor)
    return 0


cdef inline int _queue(dict pending, object s, object data) except -1:
    """``data`` after what ``pending[s]`` holds (write_many sends or buffers it)."""
    cdef PyObject* p = PyDict_GetItemWithError(pending, s)
    if p == NULL:
        PyDict_SetItem(pending, s, [data])
    else:
        (<list>p).append(data)
    return 0


cdef inline bint _filtered(SessionCore s, str channel) except -1:
    """A filter on ``channel`` (the general loop applies it)."""
    flt = s.filters
    return bool(flt) and bool(flt.get(channel))


cdef inline Py_ssize_t _send_counted(SessionCore c, object s, object data, double now,
                                     list short) except -2:
    """One non-blocking send of ``data`` (bytes, or copied once) on ``c.fd``: whole, its bytes
    counted on the session and returned; short or failed, ``(s, data, n)`` appended to
    ``short`` (``n``: bytes taken, 0 when it would block, -errno) and -1 returned."""
    cdef ssize_t r
    if type(data) is not bytes:
        data = bytes(data)
    r = send(c.fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), MSG_DONTWAIT | MSG_NOSIGNAL)
    if r < 0:
        if errno == EAGAIN or errno == EINTR:
            r = 0
        else:
            r = -errno
    if r == PyBytes_GET_SIZE(data):
        c.sent += r
        c.last_out = now
        return r
    short.append((s, data, r))
    return -1


def send_plain(list members, Py_ssize_t start, Py_ssize_t stop, str channel, cursor, env, gate,
               chunk, raw, wsmsg, ws_frame_fn, stream_cls, ws_cls, dict pending, now,
               list others, list short):
    cdef object frame = None
    cdef object s, cls, data, crypt
    cdef SessionCore c
    cdef PyObject* p
    cdef bint gated = bool(gate)
    cdef dict gate_d = gate if gated else None
    cdef Py_ssize_t i, deliveries = 0, nbytes = 0, size = PyList_GET_SIZE(members)
    cdef ssize_t r
    cdef double t = now
    if not (issubclass(stream_cls, SessionCore) and issubclass(ws_cls, SessionCore)):
        raise TypeError("send_plain: the session classes must derive from SessionCore")
    if stop > size:
        stop = size
    if start < 0:
        start = 0
    for i in range(start, stop):
        s = <object>PyList_GET_ITEM(members, i)
        if gated:
            p = PyDict_GetItemWithError(gate_d, (s, channel))
            if p != NULL:
                (<object>p).append(env)
                continue
        cls = type(s)
        if cls is stream_cls:
            c = <SessionCore>s
            if chunk is None or c.state or c.track is not None or _filtered(c, channel):
                others.append(s)
                continue
            _set_cursor(c, channel, cursor)
            data = chunk if c.chunked else raw
        elif cls is ws_cls:
            c = <SessionCore>s
            if wsmsg is None or c.state or c.deflate or _filtered(c, channel):
                others.append(s)
                continue
            if frame is None:
                frame = ws_frame_fn(wsmsg)
            _set_cursor(c, channel, cursor)
            data = frame
        else:
            others.append(s)
            continue
        crypt = c.crypt
        if c.writing or c.buf or (crypt is not None and crypt.out):
            _queue(pending, s, data)
            continue
        if crypt is not None:  # a TLS client: one encryption, then the same send
            try:
                data = crypt.encrypt(data)
            except Exception:  # write_many tries again and handles the error
                _queue(pending, s, data)
                continue
        r = _send_counted(c, s, data, t, short)
        if r >= 0:
            deliveries += 1
            nbytes += r
    return deliveries, nbytes, frame


def queue_singles(list envs, Py_ssize_t start, dict members_of, gate, stream_cls, ws_cls,
                  ws_frame_fn, chunk_fn, render_fn, bytes id_token, dict pending, lat,
                  double wall):
    cdef bint gated = bool(gate)
    cdef dict gate_d = gate if gated else None
    # the latency histogram (an IntHistogram): counted here in C, added to it on the way out,
    # each observation in the same order and arithmetic as IntHistogram.observe
    cdef double bounds[_LAT_BOUNDS]
    cdef long long counts[_LAT_BOUNDS + 1]
    cdef Py_ssize_t nb = 0, b
    cdef long long observed = 0
    cdef double total = 0.0
    cdef bint inline_lat = False
    if not (issubclass(stream_cls, SessionCore) and issubclass(ws_cls, SessionCore)):
        raise TypeError("queue_singles: the session classes must derive from SessionCore")
    if lat is not None and type(lat) is _IntHistogram and len(lat.bounds) <= _LAT_BOUNDS:
        inline_lat = True
        for b, bound in enumerate(lat.bounds):
            bounds[b] = bound
        nb = len(lat.bounds)
        for b in range(nb + 1):
            counts[b] = 0
        total = lat.total
    try:
        return _queue_singles(envs, start, members_of, gated, gate_d, stream_cls, ws_cls,
                              ws_frame_fn, chunk_fn, render_fn, id_token, pending,
                              None if inline_lat else lat, wall, bounds, nb, counts,
                              &observed, &total)
    finally:
        if observed:
            lat_counts = lat.counts
            for b in range(nb + 1):
                if counts[b]:
                    lat_counts[b] += counts[b]
            lat.count += observed
            lat.total = total


cdef tuple _queue_singles(list envs, Py_ssize_t start, dict members_of, bint gated, dict gate_d,
                          stream_cls, ws_cls, ws_frame_fn, chunk_fn, render_fn, bytes id_token,
                          dict pending, lat, double wall, double* bounds, Py_ssize_t nb,
                          long long* counts, long long* observed, double* total):
    """``queue_singles``' loop: ``nb`` > 0, the latency is counted in ``bounds`` / ``counts`` /
    ``observed`` / ``total`` (``lat`` is then None); else observed on ``lat``, if any."""
    cdef Py_ssize_t i = start, n = PyList_GET_SIZE(envs), messages = 0, b, m
    cdef bint ssend, wsend
    cdef SessionCore c
    cdef PyObject* p
    cdef double value
    cdef object env, channel, formats, stream, resp, wsmsg, members, s, cls, cursor
    cdef object raw, chunk, frame, data, content
    while i < n:
        env = <object>PyList_GET_ITEM(envs, i)
        channel = env.channel
        if i + 1 < n and (<object>PyList_GET_ITEM(envs, i + 1)).channel == channel:
            break
        formats = env.formats
        if type(formats) is dict:
            stream = _dget(<dict>formats, "http-stream")
            resp = _dget(<dict>formats, "http-response")
            wsmsg = _dget(<dict>formats, "ws-message")
        else:
            stream = formats.get("http-stream")
            resp = formats.get("http-response")
            wsmsg = formats.get("ws-message")
        if ((stream is not None and _has(stream, "content-filters"))
                or (resp is not None and _has(resp, "content-filters"))
                or (wsmsg is not None and _has(wsmsg, "content-filters"))):
            break
        p = PyDict_GetItemWithError(members_of, channel)
        if p == NULL or not (<object>p):
            messages += 1
            i += 1
            continue
        members = <object>p
        ssend = stream is not None and _sends(stream)
        wsend = wsmsg is not None and _sends(wsmsg)
        for s in members:
            cls = type(s)
            if cls is stream_cls:
                c = <SessionCore>s
                if stream is None:
                    if _filtered(c, channel):
                        return i, messages
                elif not ssend or c.state or c.track is not None or _filtered(c, channel):
                    return i, messages
            elif cls is ws_cls:
                c = <SessionCore>s
                if wsmsg is not None and (
                        not wsend or c.state or c.deflate or _filtered(c, channel)):
                    return i, messages
            else:
                return i, messages
            if gated and PyDict_GetItemWithError(gate_d, (s, channel)) != NULL:
                return i, messages
        messages += 1
        if nb:
            ts = env.ts
            if ts:
                value = wall - <double>ts
                if value < 0:
                    value = 0.0
                m = len(members)
                b = 0
                while b < nb and bounds[b] < value:  # bisect_left
                    b += 1
                counts[b] += m
                observed[0] += m
                total[0] += value * <double>m
        elif lat is not None and env.ts:
            lat.observe(wall - env.ts, len(members))
        cursor = env.cursor
        raw = chunk = frame = None
        for s in members:
            c = <SessionCore>s
            if type(s) is stream_cls:
                if stream is None:
                    continue
                if raw is None:
                    content = stream.get("content")
                    if content is None:
                        raw = b""
                    elif isinstance(content, str):
                        raw = (<str>content).encode("utf-8")
                    elif type(content) is bytes:
                        raw = content
                    else:
                        raw = bytes(content)
                    if id_token in raw:
                        raw = render_fn(raw, cursor)
                    chunk = chunk_fn(raw)
                if not raw:
                    continue
                data = chunk if c.chunked else raw
            else:
                if wsmsg is None:
                    continue
                if frame is None:
                    frame = ws_frame_fn(wsmsg)
                data = frame
            _set_cursor(c, channel, cursor)
            _queue(pending, s, data)
        i += 1
    return i, messages


def send_pending(list items, Py_ssize_t start, Py_ssize_t stop, double now, stream_cls, ws_cls,
                 list rest, list short):
    cdef Py_ssize_t i, size = PyList_GET_SIZE(items), deliveries = 0, nbytes = 0
    cdef SessionCore c
    cdef object entry, s, parts, data
    cdef ssize_t r
    if not (issubclass(stream_cls, SessionCore) and issubclass(ws_cls, SessionCore)):
        raise TypeError("send_pending: the session classes must derive from SessionCore")
    if stop > size:
        stop = size
    if start < 0:
        start = 0
    for i in range(start, stop):
        entry = <object>PyList_GET_ITEM(items, i)
        s, parts = entry
        if type(s) is not stream_cls and type(s) is not ws_cls:
            rest.append(entry)
            continue
        c = <SessionCore>s
        if c.state or c.writing or c.buf or c.crypt is not None:
            rest.append(entry)
            continue
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not data:
            continue
        r = _send_counted(c, s, data, now, short)
        if r >= 0:
            deliveries += 1
            nbytes += r
    return deliveries, nbytes
