"""Auto cross-origin (sans-IO): the CORS headers Pushpin adds with ``aco`` (reference 1.9).

Pushpin's ``Cors::applyCorsHeaders``: each header is added only when the response does not
already have it (case-insensitive):

* ``Access-Control-Allow-Methods``: the request's ``Access-Control-Request-Method``, else
  ``OPTIONS, HEAD, GET, POST, PUT, DELETE``;
* ``Access-Control-Allow-Headers``: the request's ``Access-Control-Request-Headers`` (every
  non-empty element of every occurrence, joined with ", "), only if there is one;
* ``Access-Control-Expose-Headers``: every response header name that is not simple
  (``Cache-Control``, ``Content-Language``, ``Content-Length``, ``Content-Type``,
  ``Expires``, ``Last-Modified``, ``Pragma``) nor ``Access-Control-*`` nor ``Grip-*``, once
  each, in order, only if there is one;
* ``Access-Control-Allow-Credentials: true``;
* ``Access-Control-Allow-Origin``: the request's ``Origin``, else ``*``;
* ``Access-Control-Max-Age: 3600``.

Preflights are not answered here: an ``OPTIONS`` request goes to the origin like any other and
its answer gets these headers (as in Pushpin).
"""

from __future__ import annotations

from collections.abc import Sequence

Headers = list[tuple[bytes, bytes]]

_SIMPLE = frozenset(
    [
        b"cache-control",
        b"content-language",
        b"content-length",
        b"content-type",
        b"expires",
        b"last-modified",
        b"pragma",
    ]
)
DEFAULT_METHODS = b"OPTIONS, HEAD, GET, POST, PUT, DELETE"


def _split(value: bytes) -> list[bytes]:
    return [p.strip() for p in value.split(b",") if p.strip()]


def cors_headers(
    request: Sequence[tuple[bytes, bytes]], response: Sequence[tuple[bytes, bytes]]
) -> Headers:
    """The headers to append to ``response`` (what it lacks of the CORS set)."""
    have = {k.lower() for k, _ in response}
    req_first: dict[bytes, bytes] = {}
    allow_headers: list[bytes] = []
    for k, v in request:
        lk = k.lower()
        req_first.setdefault(lk, v)
        if lk == b"access-control-request-headers":
            allow_headers.extend(_split(v))
    out: Headers = []
    if b"access-control-allow-methods" not in have:
        method = req_first.get(b"access-control-request-method")
        out.append((b"Access-Control-Allow-Methods", method or DEFAULT_METHODS))
    if b"access-control-allow-headers" not in have and allow_headers:
        out.append((b"Access-Control-Allow-Headers", b", ".join(allow_headers)))
    if b"access-control-expose-headers" not in have:
        expose: list[bytes] = []
        seen: set[bytes] = set()
        for k, _ in [*response, *out]:
            lk = k.lower()
            if lk in _SIMPLE or lk.startswith((b"access-control-", b"grip-")) or lk in seen:
                continue
            seen.add(lk)
            expose.append(k)
        if expose:
            out.append((b"Access-Control-Expose-Headers", b", ".join(expose)))
    if b"access-control-allow-credentials" not in have:
        out.append((b"Access-Control-Allow-Credentials", b"true"))
    if b"access-control-allow-origin" not in have:
        out.append((b"Access-Control-Allow-Origin", req_first.get(b"origin") or b"*"))
    if b"access-control-max-age" not in have:
        out.append((b"Access-Control-Max-Age", b"3600"))
    return out
