"""JSON-P on ``aco`` routes (sans-IO), as Pushpin's proxy does it (``RequestSession``).

Request side (``parse_request``): only a ``GET`` whose query has the callback parameter
(``jsonp_cb``, default ``callback``), or, when the route has ``jsonp_defcb`` and
``jsonp_body``, the body parameter.  The parameters ``_method`` (default ``jsonp_defmethod``:
GET in extended mode, POST in basic), ``_headers`` (a JSON object of strings; ``Host`` and
``Accept`` ignored) and ``_body`` (or the ``jsonp_body`` parameter, which also sets
``Content-Type: application/json``) are taken out of the query and become the request sent to
the origin, with ``Accept: */*``.  Values are percent-decoded (``+`` stays ``+``); a bad
one is answered ``400`` with Pushpin's message (``JsonpError``).

Response side (``wrap``): the client always gets ``200 OK`` with ``Content-Type:
application/javascript`` (and the origin's ``Cache-Control``); the body is
``/**/cb({"code": N, "reason": "...", "headers": {...}, "body": "..."});\\n`` (extended) or
``/**/cb(<body without its trailing newline>);\\n`` (basic).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.errors import RemoteProtocolError

if TYPE_CHECKING:
    from edge.routes import Jsonp

Headers = list[tuple[bytes, bytes]]
_HEX = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_EXTRACTABLE = (b"cache-control",)


class JsonpError(RemoteProtocolError):
    """A JSON-P request Pushpin answers 400 (``reason`` is the body's line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=400)


@dataclass(frozen=True, slots=True)
class JsonpRequest:
    method: bytes
    target: bytes  # path and query, the JSON-P parameters removed
    headers: Headers
    body: bytes
    callback: bytes
    extended: bool


def _unquote(value: bytes) -> bytes | None:
    """Pushpin's percent decoding: ``%XX`` only (no ``+``); None when malformed."""
    if _HEX.search(value):
        return None
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), value)


def parse_request(
    cfg: Jsonp, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> JsonpRequest | None:
    """The request to send instead of a JSON-P one, or None when JSON-P does not apply."""
    if method != b"GET":
        return None
    path, _, query = target.partition(b"?")
    items = [(k, v) for k, _, v in (item.partition(b"=") for item in query.split(b"&")) if k or v]

    def has(name: bytes) -> bool:
        return any(k == name for k, _ in items)

    def value(name: bytes) -> bytes:
        return next(v for k, v in items if k == name)

    cb_param = cfg.callback_param.encode()
    body_param = cfg.body_param.encode()
    if not has(cb_param) and not (cfg.default_callback and body_param and has(body_param)):
        return None
    removed: set[bytes] = set()
    if has(cb_param):
        callback = _unquote(value(cb_param))
        if not callback:
            raise JsonpError("Invalid callback parameter.")
        removed.add(cb_param)
    else:
        callback = cfg.default_callback.encode()
    new_method = cfg.default_method.encode()
    if has(b"_method"):
        m = _unquote(value(b"_method"))
        if not m or not all(0x20 <= c < 0x7F for c in m):
            raise JsonpError("Invalid _method parameter.")
        new_method = m
        removed.add(b"_method")
    out: Headers = []
    if has(b"_headers"):
        raw = _unquote(value(b"_headers"))
        try:
            obj = json.loads(raw) if raw is not None else None
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise JsonpError("Invalid _headers parameter.")
        for k, v in sorted(obj.items()):  # Pushpin iterates a QVariantMap: sorted by name
            if k.lower() in ("host", "accept"):
                continue
            out.append((k.encode(), v.encode()))
        removed.add(b"_headers")
    body = b""
    bparam = body_param or b"_body"
    if has(bparam):
        decoded = _unquote(value(bparam))
        if decoded is None:
            raise JsonpError(f"Invalid {'body' if body_param else '_body'} parameter.")
        body = decoded
        if body_param:
            out = [(k, v) for k, v in out if k.lower() != b"content-type"]
            out.append((b"Content-Type", b"application/json"))
        removed.add(bparam)
    rest = [(k, v) for k, v in items if k not in removed]
    new_query = b"&".join(k + b"=" + v if v or k else k for k, v in rest)
    new_target = path + (b"?" + new_query if new_query else b"")
    host = next((v for k, v in headers if k.lower() == b"host"), b"")
    out.append((b"Host", host))
    out.append((b"Accept", b"*/*"))
    out.extend((k, v) for k, v in headers if k.lower() not in (b"host", b"accept"))
    return JsonpRequest(new_method, new_target, out, body, callback, cfg.extended)


def _json_str(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def wrap(
    req: JsonpRequest, code: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> tuple[Headers, bytes]:
    """The head (headers; status is ``200 OK``) and body the client gets for an origin
    response (passthrough, complete ``body``)."""
    if req.extended:
        first: dict[str, str] = {}
        for k, v in headers:
            first.setdefault(k.decode("latin-1"), v.decode("utf-8", "replace"))
        hjson = json.dumps(dict(sorted(first.items())), separators=(",", ":"), ensure_ascii=False)
        out = (
            b"/**/"
            + req.callback
            + b'({"code": %d, "reason": ' % code
            + _json_str(reason.decode("utf-8", "replace"))
            + b', "headers": '
            + hjson.encode("utf-8")
            + b', "body": '
            + _json_str(body.decode("utf-8", "replace"))
            + b"});\n"
        )
    else:
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        out = b"/**/" + req.callback + b"(" + body + b");\n"
    hs: Headers = [
        (b"Content-Type", b"application/javascript"),
        (b"Content-Length", b"%d" % len(out)),
    ]
    hs.extend((k, v) for k, v in headers if k.lower() in _EXTRACTABLE)
    return hs, out
