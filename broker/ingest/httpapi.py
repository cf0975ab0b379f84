"""The publish HTTP API, sans-IO (reference 3.3; ``PP:src/handler/handlerengine.cpp``
``controlHttpServer_requestReady`` and ``PP:src/core/simplehttpserver.cpp``).

One request per connection.  The server calls ``check_head`` once the request head is parsed
(Pushpin's server-level checks: 411, bad or too large Content-Length; also whether to send
``100 Continue``), reads the body, then calls ``handle_request``.  Every response carries
``Connection: close`` and ``Content-Length``.  ``Authorization`` is accepted and ignored, as
Pushpin does (pypubcontrol sends a Bearer JWT), unless ``publish_jwt_key`` is set: then the
server checks it first (``broker.ingest.auth``) and answers ``401`` with the reason.

Status texts and bodies are Pushpin's exactly: ``200 Published`` (text or
``{"message": "Published"}``), ``400 Body is not valid JSON.``, ``400 Invalid format...``,
``404 Not Found``, ``405 Method not allowed: GET.`` with ``Allow: POST``, ``406 Not
Acceptable. Supported formats are text/plain and application/json.``, ``411 Request requires
Content-Length.``, ``400 Request body too large.``, ``GET /`` -> ``Pushpin API``,
``POST /recover`` -> ``Updated``.  Errors are always ``text/plain``, as in Pushpin.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from broker.errors import PublishError
from broker.items import Item, parse_http_publish, status_reason

MAX_BODY_BYTES = 1_000_000
MAX_HEADER_BYTES = 10_000
_TEXT = "text/plain"
_JSON = "application/json"
_BODYLESS_METHODS = ("HEAD", "GET", "DELETE", "OPTIONS")

Headers = Iterable[tuple[bytes | str, bytes | str]]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def to_bytes(self, http_version: str = "1.1") -> bytes:
        """The whole response: status line (HTTP/1.0 for 1.0 requests), headers, body."""
        version = "1.0" if http_version == "1.0" else "1.1"
        lines = [f"HTTP/{version} {self.status} {self.reason}"]
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True, slots=True)
class HeadCheck:
    """Outcome of ``check_head``: an early response, or how much body to read."""

    response: Response | None = None
    content_length: int = 0
    expect_continue: bool = False


@dataclass(frozen=True, slots=True)
class ApiResult:
    response: Response
    items: tuple[Item, ...] = ()
    recover: bool = False
    error: str | None = field(default=None)  # the reason of a rejected publish, for logging


def respond(
    status: int,
    body: str,
    content_type: str = _TEXT,
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    data = body.encode("utf-8")
    headers = extra + (
        ("Content-Type", content_type),
        ("Connection", "close"),
        ("Content-Length", str(len(data))),
    )
    return Response(status, status_reason(status), headers, data)


def _norm(headers: Headers) -> list[tuple[str, str]]:
    out = []
    for k, v in headers:
        ks = k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else k
        vs = v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v
        out.append((ks.lower(), vs.strip()))
    return out


def check_head(method: str, headers: Headers) -> HeadCheck:
    """Pushpin's server-level checks, made before the body is read."""
    hs = _norm(headers)
    lengths = [v for k, v in hs if k == "content-length"]
    has_te = any(k == "transfer-encoding" for k, _ in hs)
    if not lengths and (has_te or method.upper() not in _BODYLESS_METHODS):
        return HeadCheck(respond(411, "Request requires Content-Length.\n"))
    if not lengths:
        return HeadCheck()
    try:
        n = int(lengths[0])
        if n < 0 or not lengths[0].isdigit():
            raise ValueError
    except ValueError:
        return HeadCheck(respond(400, "Bad Content-Length.\n"))
    if n > MAX_BODY_BYTES:
        return HeadCheck(respond(400, "Request body too large.\n"))
    expect = any(k == "expect" and v.lower() == "100-continue" for k, v in hs)
    return HeadCheck(content_length=n, expect_continue=expect)


def negotiate(headers: Headers) -> str | None:
    """The response type from ``Accept`` (last acceptable entry wins, as in Pushpin), or None."""
    accepts = [v for k, v in _norm(headers) if k == "accept"]
    if not accepts:
        return _TEXT
    chosen = None
    for value in accepts:
        for part in value.split(","):
            mtype = part.split(";", 1)[0].strip().lower()
            if not mtype:
                continue
            if mtype in ("text/plain", "text/*", "*/*", "*"):
                chosen = _TEXT
            elif mtype in ("application/json", "application/*"):
                chosen = _JSON
    return chosen


def _message(text: str, ctype: str) -> Response:
    if ctype == _JSON:
        return respond(200, json.dumps({"message": text}) + "\n", _JSON)
    return respond(200, text + "\n", _TEXT)


def _not_allowed(method: str) -> Response:
    return respond(405, f"Method not allowed: {method}.\n", extra=(("Allow", "POST"),))


def handle_request(method: str, target: str, headers: Headers, body: bytes) -> ApiResult:
    """Answer one complete request (head already accepted by ``check_head``)."""
    ctype = negotiate(headers)
    if ctype is None:
        return ApiResult(
            respond(406, "Not Acceptable. Supported formats are text/plain and application/json.\n")
        )
    path = target.split("?", 1)[0]
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path == "/":
        return ApiResult(respond(200, "Pushpin API\n"))
    if path == "/publish":
        if method != "POST":
            return ApiResult(_not_allowed(method))
        try:
            items = parse_http_publish(body)
        except PublishError as exc:
            return ApiResult(respond(400, exc.reason + "\n"), error=exc.reason)
        return ApiResult(_message("Published", ctype), tuple(items))
    if path == "/recover":
        if method != "POST":
            return ApiResult(_not_allowed(method))
        return ApiResult(_message("Updated", ctype), recover=True)
    return ApiResult(respond(404, "Not Found\n"))


def header_too_large() -> Response:
    return respond(400, "Request header too large.\n")


def bad_header() -> Response:
    return respond(400, "Failed to parse request header.\n")
