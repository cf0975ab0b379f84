"""Bytes of HTTP/1.1 responses the edge writes to clients (sans-IO).

Heads are written from prepared bytes, never through a generic serializer on the hot path.
Also: the response a long-poll client gets when an ``http-response`` is published (reference
2.5 step 4: the timeout response's headers, replaced/extended by the published ones,
``Grip-*`` removed, ``Content-Length`` recomputed).

Every head toward a client is built by ``head()``, and ``head()`` writes only what is valid
HTTP whatever its source (a published item, an origin's ``Grip-Status`` or JSON instruction, a
passed-through origin response): a header whose name is not an RFC 9110 token or whose value
holds a control character (CR, LF, NUL, ...; HTAB is allowed) is left out, and a reason phrase
that is not ``reason-phrase`` text is replaced by the code's standard one (a code that is not
three digits, e.g. a ``Grip-Status: 0`` or a published code 0, is written as 502).  So no source can
split a response or add a header; the broker refuses such publishes first (``broker.items``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from broker.items import status_reason
from edge.grip.instruct import Hold
from edge.grip.jsonpatch import PatchError, patch_body
from edge.http1.headers import clean_response_headers

_CRLF = b"\r\n"
# header pairs as the callers have them: str (ours, a hold's) or bytes (a client's, an origin's)
HeaderPairs = Iterable[tuple[str | bytes, str | bytes]]


def _latin1(s: object) -> bytes:
    if isinstance(s, bytes):
        return s
    return str(s).encode("latin-1", "replace")


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
_TEXT_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search


def valid_field(name: bytes, value: bytes) -> bool:
    """May ``name: value`` be written in a head: the name a token, the value field text."""
    return _TOKEN(name) is not None and _TEXT_BAD(value) is None


def valid_reason(reason: bytes) -> bool:
    """Is ``reason`` a reason phrase (HTAB, SP, VCHAR, obs-text)?"""
    return _TEXT_BAD(reason) is None


def head(code: int, reason: str, headers: HeaderPairs, *, version: bytes = b"HTTP/1.1") -> bytes:
    """Status line and headers (``(name, value)`` str or bytes pairs), blank line included.

    Invalid fields are left out and an invalid reason replaced (see the module docstring)."""
    if not 100 <= code <= 999:  # a status-code is three digits; garbage from upstream: 502
        code, reason = 502, ""
    r = _latin1(reason) if reason else b""
    if not r or not valid_reason(r):
        r = status_reason(code).encode("latin-1")
    parts = [b"%s %d %s\r\n" % (version, code, r)]
    for k, v in headers:
        kb, vb = _latin1(k), _latin1(v)
        if valid_field(kb, vb):  # never let a header split the head or add another
            parts.append(b"%s: %s\r\n" % (kb, vb))
    parts.append(_CRLF)
    return b"".join(parts)


def full(
    code: int,
    reason: str,
    headers: HeaderPairs,
    body: bytes,
    *,
    keep_alive: bool = True,
    head_only: bool = False,
) -> bytes:
    """A complete response with ``Content-Length``; ``headers`` must not carry framing."""
    if not 100 <= code <= 999:  # as head() writes it, so that the framing agrees
        code, reason = 502, ""
    hs = list(headers)
    if code >= 200 and code not in (204, 304):
        hs.append(("Content-Length", str(len(body))))
    if not keep_alive:
        hs.append(("Connection", "close"))
    out = head(code, reason, hs)
    if head_only or code < 200 or code in (204, 304):
        return out
    return out + body


def error(code: int, text: str, *, keep_alive: bool = False, extra: HeaderPairs = ()) -> bytes:
    """A ``text/plain`` error answer; the body ends with a newline (reference 1.8).
    ``extra`` headers (CORS on ``aco`` routes) follow ``Content-Type``."""
    body = text.encode("utf-8") + b"\n"
    headers: list[tuple[str | bytes, str | bytes]] = [("Content-Type", "text/plain")]
    headers.extend(extra)
    return full(code, status_reason(code), headers, body, keep_alive=keep_alive)


def published(
    hold: Hold,
    fmt: dict[str, Any],
    *,
    keep_alive: bool = True,
    patched: dict[bytes, bytes] | None = None,
) -> bytes:
    """The response for a response-hold client from a published ``http-response`` format.

    ``patched`` (optional, one per published message): ``body-patch`` results by timeout body,
    so the polls of one message that share a timeout body (the usual case) patch it once."""
    code = fmt.get("code")
    code = 200 if code is None else int(code)
    reason = fmt.get("reason") or status_reason(code)
    raw = [(str(k), str(v)) for k, v in (fmt.get("headers") or [])]
    pub_headers = clean_response_headers(raw)
    names = {k.lower() for k, _ in pub_headers}
    merged = [(k, v) for k, v in hold.headers if k.lower() not in names] + pub_headers
    expose = [
        e.strip().lower()
        for k, v in raw
        if k.lower() == "grip-expose-headers"
        for e in v.split(",")
        if e.strip()
    ]
    if expose:  # whitelist semantics (reference 2.3.8: the C++ handler's inversion is a bug)
        merged = [(k, v) for k, v in merged if k.lower() in expose]
    body = fmt.get("body")
    if body is None:
        body = hold.body
        patch = fmt.get("body-patch")
        if patch is not None:
            done = patched.get(body) if patched is not None else None
            if done is None:
                try:
                    done = patch_body(body, patch)
                except PatchError:  # also PatchLimitError: one session's answer, nothing else
                    done = body  # Pushpin keeps the timeout body when the patch does not apply
                if patched is not None:
                    patched[body] = done
            body = done
    elif isinstance(body, str):
        body = body.encode("utf-8")
    return full(code, reason, merged, body, keep_alive=keep_alive)


def timeout(hold: Hold, *, keep_alive: bool = True) -> bytes:
    """The response of a response hold whose timeout ran out (or of a no-hold instruct)."""
    return full(hold.code, hold.reason, hold.headers, hold.body, keep_alive=keep_alive)


def stream_head(hold: Hold, *, chunked: bool) -> bytes:
    """The head of a stream hold (reference 2.6): chunked for HTTP/1.1 clients."""
    hs = list(hold.headers)
    if chunked:
        hs.append(("Transfer-Encoding", "chunked"))
        hs.append(("Connection", "Transfer-Encoding"))
    else:
        hs.append(("Connection", "close"))
    return head(hold.code, hold.reason, hs)
