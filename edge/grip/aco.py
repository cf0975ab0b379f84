"""Auto cross-origin on GRIP answers (sans-IO), where Pushpin's handler applies it.

Pushpin's proxy hands a GRIP request to its handler with the route's ``aco`` and the JSON-P
callback, and the handler decides when the client's response is written
(``httpsession.cpp``):

* a stream hold's head, and the instruct's answer when nothing is held: the instruct's headers
  with the CORS headers (``edge.cors``); JSON-P is not applied (the head goes out before
  anything could be wrapped);
* a response hold's answer (a published ``http-response``, or the timeout response), at the
  moment it is written: with JSON-P, the answer wrapped (``wrap_held``), else the CORS headers
  computed from the final headers, so ``Access-Control-Expose-Headers`` names the headers a
  published ``http-response`` added.

``finish_held`` takes the answer as the edge rendered it (``edge.http1.responses.full``: the
delivery path renders one per session and knows nothing of ``aco``) and renders it again;
``with_cors`` gives a hold's headers their CORS set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from edge.cors import cors_headers
from edge.http1 import responses
from edge.jsonp import JsonpRequest

Headers = list[tuple[bytes, bytes]]
_FRAMING = (b"content-length", b"connection")


def with_cors(
    hold_headers: Sequence[tuple[str, str]], request: Sequence[tuple[bytes, bytes]]
) -> tuple[tuple[str, str], ...]:
    """A hold's headers followed by the CORS headers they lack."""
    have = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hold_headers]
    extra = cors_headers(request, have)
    return (*hold_headers, *((k.decode("latin-1"), v.decode("latin-1")) for k, v in extra))


def split_full(data: bytes) -> tuple[int, bytes, Headers, bytes, bool]:
    """``(code, reason, headers, body, keep_alive)`` of a response ``responses.full`` wrote
    (``Content-Length`` and ``Connection`` taken out)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    _, code, reason = (lines[0].split(b" ", 2) + [b""])[:3]
    headers: Headers = []
    keep_alive = True
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        lk = k.lower()
        if lk == b"connection" and v.strip().lower() == b"close":
            keep_alive = False
        if lk not in _FRAMING:
            headers.append((k, v.strip()))
    return int(code), reason, headers, body, keep_alive


def wrap_held(
    req: JsonpRequest, code: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> tuple[Headers, bytes]:
    """A response hold's answer as JSON-P (Pushpin's handler, not its proxy: ``edge.jsonp``
    wraps passthrough answers): the status becomes ``200 OK``, every header stays but
    ``Content-Type`` is ``application/javascript``; the body is ``/**/cb(<json>);\\n`` with,
    in extended mode, a compact JSON object with sorted keys (``body``, ``code``, ``headers``:
    one entry per header name, its values joined with ``", "``, and ``reason``), in basic mode
    the body without its trailing newline."""
    if req.extended:
        merged: dict[str, list[str]] = {}
        names: dict[bytes, str] = {}
        for k, v in headers:
            name = names.setdefault(k.lower(), k.decode("latin-1"))
            merged.setdefault(name, []).append(v.decode("utf-8", "replace"))
        doc = {
            "code": code,
            "reason": reason.decode("utf-8", "replace"),
            "headers": {k: ", ".join(vs) for k, vs in merged.items()},
            "body": body.decode("utf-8", "replace"),
        }
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        out = b"/**/" + req.callback + b"(" + text.encode("utf-8") + b");\n"
    else:
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        out = b"/**/" + req.callback + b"(" + body + b");\n"
    hs = [(k, v) for k, v in headers if k.lower() != b"content-type"]
    hs.append((b"Content-Type", b"application/javascript"))
    return hs, out


def finish_held(
    data: bytes, request: Sequence[tuple[bytes, bytes]], jsonp: JsonpRequest | None
) -> bytes:
    """A response hold's rendered answer ``data`` as an ``aco`` route sends it."""
    code, reason, headers, body, keep_alive = split_full(data)
    if jsonp is not None:
        headers, body = wrap_held(jsonp, code, reason, headers, body)
        code, reason = 200, b"OK"
    else:
        headers += cors_headers(request, headers)
    return responses.full(code, reason.decode("latin-1"), headers, body, keep_alive=keep_alive)
