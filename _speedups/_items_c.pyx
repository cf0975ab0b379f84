# cython: language_level=3
"""The usual published item, normalised fast (compiled twin of ``_items_py``; same API and
behaviour, see there)."""
from cpython.object cimport PyObject_GenericSetAttr

cdef object _MISSING = object()
cdef object _new = object.__new__


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
        if not item_id:
            item_id = None
    prev_id = value.get(K.prev)
    if prev_id is not None:
        if type(prev_id) is not str:
            prev_id = _text(prev_id)
            if prev_id is _MISSING:
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
        meta = {}
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
