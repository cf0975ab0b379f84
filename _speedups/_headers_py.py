"""The per-header loops of a proxied request (pure-Python twin of ``_headers_c``).

A browser sends fifteen headers or so with every request; each of these loops runs once per
client request toward the origin (``edge.proxyrules.apply``, ``edge.origin.client``):

* ``rules_clean``: no client header is one Pushpin's proxy rules remove or rewrite;
* ``forward_filter``: the client's Host and the headers an origin gets (hop-by-hop and
  ``drop`` headers, and every ``Grip-*`` unless kept, removed);
* ``head_join``: the request head's bytes from its parts (its checks stay with the caller);
* ``request_facts``: what a client request's headers say about its framing and Host
  (``edge.http1.connection``: the checks and refusals stay with the caller);
* ``grip_facts``: what an origin response's headers say about GRIP (``edge.grip.instruct``).
"""

from __future__ import annotations

from collections.abc import Container, Iterable

Headers = Iterable[tuple[bytes, bytes]]


def rules_clean(headers: Headers, ruled: Container[bytes], prefix: bytes) -> bool:
    """True when no header name, lowercased, is in ``ruled`` or starts with ``prefix``."""
    for k, _ in headers:
        lk = k.lower()
        if lk in ruled or lk.startswith(prefix):
            return False
    return True


def forward_filter(
    headers: Headers, drop: Container[bytes], keep_grip: bool
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(the value of the client's last ``Host`` header, or b""; the headers, in order, whose
    lowercased name is not in ``drop`` and, unless ``keep_grip``, does not start ``grip-``)."""
    client_host = b""
    out: list[tuple[bytes, bytes]] = []
    for k, v in headers:
        lk = k.lower()
        if lk == b"host":
            client_host = v
        if lk in drop or (lk.startswith(b"grip-") and not keep_grip):
            continue
        out.append((k, v))
    return client_host, out


# a control character other than HTAB (CR and LF included): never inside a part of a head
_CTL = bytes(c for c in range(32) if c != 9) + b"\x7f"


def head_join(
    method: bytes, target: bytes, host: bytes, headers: Headers, tokens: set[bytes] | None
) -> bytes | None:
    """``METHOD target HTTP/1.1``, ``Host`` and one line per header, then the blank line.

    None when a header name is not in ``tokens`` (not checked yet: the caller checks it and
    asks again; ``tokens`` None: no such test), or when the head would not be sound: a control
    character other than HTAB (CR and LF included) in the method, the target, the Host, a
    name or a value; an empty target, or one with a space or HTAB (the caller says which)."""
    if not target or b" " in target or b"\t" in target:
        return None
    parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    n = 3  # the template's own CR LF pairs: one a line; the parts must hold none
    for k, v in headers:
        if tokens is not None and k not in tokens:
            return None
        parts += (k, b": ", v, b"\r\n")
        n += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    if head.count(b"\n") != n or head.count(b"\r") != n:
        return None
    if len(head.translate(None, _CTL)) != len(head) - 2 * n:
        return None
    return head


def request_facts(headers: Headers) -> tuple[set[bytes], bool, bytes | None, int, bool]:
    """(the distinct ``Content-Length`` values, stripped; whether a ``Transfer-Encoding``
    came; the first ``Host`` value (None: none); how many ``Host`` headers; whether an
    ``Expect: 100-continue`` came), names compared without case."""
    lengths: set[bytes] = set()
    te = expect = False
    host: bytes | None = None
    hosts = 0
    for k, v in headers:
        lk = k.lower()
        if lk == b"content-length":
            lengths.add(v.strip())
        elif lk == b"transfer-encoding":
            te = True
        elif lk == b"host":
            if not hosts:
                host = v
            hosts += 1
        elif lk == b"expect" and v.strip().lower() == b"100-continue":
            expect = True
    return lengths, te, host, hosts, expect


_INSTRUCT_TYPE = b"application/grip-instruct"


def grip_facts(headers: Headers) -> tuple[bool, bytes | None, bool]:
    """What the proxy asks of an origin response's headers, read in one pass (once per client
    request): ``is_grip_response``; the first ``Grip-Hold`` value (None: none); and whether
    the instruct may be a stream whose body is relayed as it arrives (``Grip-Hold: stream``,
    or no hold and a ``next`` ``Grip-Link``, and no JSON instruct: ``edge.grip.holds``)."""
    grip, hold, has_next, ctype = False, None, False, b""
    for k, v in headers:
        lk = k.lower()
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
