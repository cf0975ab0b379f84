# cython: language_level=3
"""The per-header loops of a proxied request (compiled twin of ``_headers_py``).

The loops run on exact ``(bytes, bytes)`` tuples, the edge's header form; any other item
(a list pair, a bytearray) sends the whole call to the pure twin, so both answer alike."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from _speedups import _headers_py as _pure


cdef inline bint _pair(object kv):
    return (
        type(kv) is tuple
        and len(<tuple>kv) == 2
        and type((<tuple>kv)[0]) is bytes
        and type((<tuple>kv)[1]) is bytes
    )


cdef bint _pairs(object headers):
    """A list or tuple of exact ``(bytes, bytes)`` tuples (iterated twice here)."""
    if type(headers) is not list and type(headers) is not tuple:
        return False
    for kv in headers:
        if not _pair(kv):
            return False
    return True


def rules_clean(headers, ruled, prefix):
    """True when no header name, lowercased, is in ``ruled`` or starts with ``prefix``."""
    cdef bytes lk
    if not _pairs(headers):
        return _pure.rules_clean(headers, ruled, prefix)
    for kv in headers:
        lk = (<bytes>(<tuple>kv)[0]).lower()
        if lk in ruled or lk.startswith(prefix):
            return False
    return True


def forward_filter(headers, drop, bint keep_grip):
    """(the value of the client's last ``Host`` header, or b""; the headers, in order, whose
    lowercased name is not in ``drop`` and, unless ``keep_grip``, does not start ``grip-``)."""
    cdef bytes client_host = b""
    cdef list out = []
    cdef bytes lk
    cdef tuple t
    if not _pairs(headers):
        return _pure.forward_filter(headers, drop, keep_grip)
    for kv in headers:
        t = <tuple>kv
        lk = (<bytes>t[0]).lower()
        if lk == b"host":
            client_host = <bytes>t[1]
        if lk in drop or (not keep_grip and lk.startswith(b"grip-")):
            continue
        out.append(t)
    return client_host, out


cdef inline bint _sound(bytes b):
    """No control character other than HTAB (CR and LF included) in ``b``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(b)
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if (c < 32 and c != 9) or c == 127:
            return False
    return True


def head_join(method, target, host, headers, tokens):
    """``METHOD target HTTP/1.1``, ``Host`` and one line per header, then the blank line.

    None when a header name is not in ``tokens`` (not checked yet: the caller checks it and
    asks again; ``tokens`` None: no such test), or when the head would not be sound: a control
    character other than HTAB (CR and LF included) in the method, the target, the Host, a
    name or a value; an empty target, or one with a space or HTAB (the caller says which)."""
    cdef list parts
    cdef tuple t
    cdef bint check = tokens is not None
    if (
        type(method) is not bytes
        or type(target) is not bytes
        or type(host) is not bytes
        or not _pairs(headers)
    ):
        return _pure.head_join(method, target, host, headers, tokens)
    if not target or b" " in <bytes>target or b"\t" in <bytes>target:
        return None
    if not (_sound(<bytes>method) and _sound(<bytes>target) and _sound(<bytes>host)):
        return None
    parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for kv in headers:
        t = <tuple>kv
        if check and t[0] not in tokens:
            return None
        if not (_sound(<bytes>t[0]) and _sound(<bytes>t[1])):
            return None
        parts.append(t[0])
        parts.append(b": ")
        parts.append(t[1])
        parts.append(b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def request_facts(headers):
    """(the distinct ``Content-Length`` values, stripped; whether a ``Transfer-Encoding``
    came; the first ``Host`` value (None: none); how many ``Host`` headers; whether an
    ``Expect: 100-continue`` came), names compared without case."""
    cdef set lengths = set()
    cdef bint te = False, expect = False
    cdef object host = None
    cdef Py_ssize_t hosts = 0
    cdef bytes lk
    cdef tuple t
    if not _pairs(headers):
        return _pure.request_facts(headers)
    for kv in headers:
        t = <tuple>kv
        lk = (<bytes>t[0]).lower()
        if lk == b"content-length":
            lengths.add((<bytes>t[1]).strip())
        elif lk == b"transfer-encoding":
            te = True
        elif lk == b"host":
            if not hosts:
                host = t[1]
            hosts += 1
        elif lk == b"expect" and (<bytes>t[1]).strip().lower() == b"100-continue":
            expect = True
    return lengths, te, host, hosts, expect


cdef bytes _INSTRUCT_TYPE = b"application/grip-instruct"


def grip_facts(headers):
    """What the proxy asks of an origin response's headers, read in one pass (once per client
    request): ``is_grip_response``; the first ``Grip-Hold`` value (None: none); and whether
    the instruct may be a stream whose body is relayed as it arrives (``Grip-Hold: stream``,
    or no hold and a ``next`` ``Grip-Link``, and no JSON instruct: ``edge.grip.holds``)."""
    cdef bint grip = False, has_next = False
    cdef object hold = None
    cdef bytes ctype = b"", lk, v
    cdef tuple t
    if not _pairs(headers):
        return _pure.grip_facts(headers)
    for kv in headers:
        t = <tuple>kv
        lk = (<bytes>t[0]).lower()
        v = <bytes>t[1]
        if lk.startswith(b"grip-"):
            grip = True
            if lk == b"grip-hold":
                if hold is None:
                    hold = v
            elif lk == b"grip-link" and b"next" in v:
                has_next = True
        elif lk == b"content-type":
            if not ctype:
                ctype = v
            if not grip and v.split(b";", 1)[0].strip().lower() == _INSTRUCT_TYPE:
                grip = True
    is_json = ctype.split(b";", 1)[0].strip() == _INSTRUCT_TYPE
    return grip, hold, not is_json and (hold == b"stream" or (hold is None and has_next))
