"""GRIP instruct parsing (sans-IO): an origin response -> a frozen ``Hold``.

Follows Pushpin's ``handler/instruct.cpp``: the ``Grip-*`` headers are parsed first; with
``Content-Type: application/grip-instruct`` the JSON body is then applied (channels appended,
mode/timeout/keep-alive overriding, meta merged, and the client response built only from the
JSON ``response`` object).  Errors raise ``InstructError`` whose reason is Pushpin's debug text.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, overload

from _speedups import grip_facts as grip_facts  # (the one pass over a response's headers)
from broker.errors import InstructError
from broker.items import status_reason
from edge.grip import filters
from edge.http1.headers import (
    Headers,
    ParamError,
    all_params,
    clean_response_headers,
    header_get,
    param_get,
    parse_params,
    split_list,
)

DEFAULT_TIMEOUT_S = 55
MIN_TIMEOUT_S = 5
DEFAULT_KEEPALIVE_S = 55
DEFAULT_NEXTLINK_S = 120
MAX_CHANNELS = 20  # connection_subscription_max: extras are silently dropped
MAX_FILTERS = 5
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    prev_id: str | None = None
    filters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeepAlive:
    data: bytes
    timeout_s: int = DEFAULT_KEEPALIVE_S
    mode: str = "idle"  # "idle" (reset by output) | "interval"


@dataclass(frozen=True, slots=True)
class Hold:
    """A parsed GRIP instruction plus the response the client gets (or the timeout response)."""

    mode: str | None  # None (answer now) | "response" | "stream"
    channels: tuple[Channel, ...] = ()
    timeout_s: int = DEFAULT_TIMEOUT_S
    keep_alive: KeepAlive | None = None
    next_link: str | None = None
    next_link_timeout_s: int | None = None
    gone_link: str | None = None
    meta: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # read-only: shared
    code: int = 200
    reason: str = "OK"
    headers: tuple[tuple[str, str], ...] = ()  # client-facing, GRIP and hop-by-hop removed
    body: bytes = b""
    # the proxy-content filter (build-id) failed on ``body`` (then b""): Pushpin's debug text
    body_error: str | None = None


def is_grip_response(headers: list[tuple[bytes, bytes]]) -> bool:
    """Reference 1.6: any ``Grip-*`` header, or Content-Type ``application/grip-instruct``
    (``grip_facts``' first answer)."""
    return grip_facts(headers)[0]


def _int(text: str, error: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InstructError(error) from None


def unescape_cstring(data: str) -> bytes:
    """Grip-Keep-Alive ``format=cstring``: ``\\\\``, ``\\r``, ``\\n``, ``\\xHH``; other escapes dropped."""
    out = bytearray()
    raw = data.encode("latin-1")
    n = 0
    while n < len(raw):
        c = raw[n]
        if c == 0x5C:
            if n + 1 >= len(raw):
                raise InstructError("failed to parse Grip-Keep-Alive cstring format")
            n += 1
            e = raw[n]
            if e == 0x5C:
                out.append(0x5C)
            elif e == 0x72:
                out.append(0x0D)
            elif e == 0x6E:
                out.append(0x0A)
            elif e == 0x78:
                hexdigits = raw[n + 1 : n + 3]
                if len(hexdigits) != 2 or not all(chr(h) in _HEX for h in hexdigits):
                    raise InstructError("failed to parse Grip-Keep-Alive cstring format")
                out.append(int(hexdigits, 16))
                n += 2
        else:
            out.append(c)
        n += 1
    return bytes(out)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return b""


def _keep_alive(headers: Headers) -> KeepAlive | None:
    value = header_get(headers, "Grip-Keep-Alive")
    if not value:
        return None
    try:
        params = parse_params(value)
    except ParamError:
        return None
    val = params[0][0]
    if not val:
        raise InstructError("Grip-Keep-Alive cannot be empty")
    mode = param_get(params, "mode") or "idle"
    if mode not in ("idle", "interval"):
        raise InstructError(f"no such Grip-Keep-Alive mode '{mode}'")
    timeout = DEFAULT_KEEPALIVE_S
    t = param_get(params, "timeout")
    if t is not None:
        timeout = _int(t, "failed to parse Grip-Keep-Alive timeout value")
        if timeout < 0:
            raise InstructError("Grip-Keep-Alive timeout has invalid value")
    fmt = param_get(params, "format") or "raw"
    if fmt == "raw":
        data = val.encode("latin-1")
    elif fmt == "cstring":
        data = unescape_cstring(val)
    elif fmt == "base64":
        data = _b64(val)
    else:
        raise InstructError(f"no such Grip-Keep-Alive format '{fmt}'")
    return KeepAlive(data, max(timeout, 1), mode)


def _channels(headers: Headers) -> list[Channel]:
    out = []
    for params in all_params(headers, "Grip-Channel"):
        name = params[0][0]
        if not name:
            raise InstructError("failed to parse Grip-Channel")
        filters = tuple(v for k, v in params[1:] if k == "filter")
        if len(filters) > MAX_FILTERS:
            raise InstructError(f"too many filters for channel '{name}'")
        out.append(Channel(name, param_get(params, "prev-id"), filters))
    return out


def _links(headers: Headers) -> tuple[str | None, int | None, str | None]:
    next_link = gone_link = None
    next_timeout = None
    for params in all_params(headers, "Grip-Link"):
        if len(params) < 2:
            continue
        v = params[0][0]
        if len(v) <= 2 or v[0] != "<" or v[-1] != ">":
            raise InstructError("failed to parse Grip-Link value")
        link = v[1:-1]
        rel = param_get(params, "rel")
        if rel == "next":
            next_link = link
            t = param_get(params, "timeout")
            next_timeout = DEFAULT_NEXTLINK_S
            if t is not None:
                next_timeout = _int(t, "failed to parse Grip-Link timeout value")
                if next_timeout < 0:
                    raise InstructError("Grip-Link timeout has invalid value")
        elif rel == "gone":
            gone_link = link
    return next_link, next_timeout, gone_link


def parse_instruct(
    code: int,
    reason: str,
    headers: Headers,
    body: bytes,
    *,
    prefix: str = "",
    extra_channels: tuple[str, ...] = (),
) -> Hold:
    """Parse an origin response that ``is_grip_response`` into a Hold.

    ``prefix`` (route ``prefix=``) is prepended to every channel name; ``extra_channels``
    (target ``sub=``) are added for holds.  At most MAX_CHANNELS channels are kept.
    """
    mode = None
    hold_value = header_get(headers, "Grip-Hold")
    if hold_value is not None:
        if hold_value not in ("response", "stream"):
            raise InstructError("Grip-Hold must be set to either 'response' or 'stream'")
        mode = hold_value
    channels = _channels(headers)
    timeout = None
    t = header_get(headers, "Grip-Timeout")
    if t is not None:
        timeout = _int(t, "failed to parse Grip-Timeout")
        if timeout < 0:
            raise InstructError("Grip-Timeout has invalid value")
    expose: list[str] = []
    for value in [v for k, v in headers if k.lower() == "grip-expose-headers"]:
        try:
            expose.extend(e for e in split_list(value) if e)
        except ParamError:
            continue
    keep_alive = _keep_alive(headers)
    meta = {}
    for params in all_params(headers, "Grip-Set-Meta", parse_first=True):
        if params:  # an empty element (``Grip-Set-Meta: ,``) sets nothing
            meta[params[0][0]] = params[0][1]
    status = header_get(headers, "Grip-Status")
    if status:
        code_str, _, new_reason = status.partition(" ")
        try:
            code = int(code_str)
        except ValueError:
            code = -1
        if not 0 <= code <= 999:
            raise InstructError("Grip-Status contains invalid status code")
        reason = new_reason
    next_link, next_timeout, gone_link = _links(headers)
    out_headers = clean_response_headers(headers, expose=expose or None)

    ctype = header_get(headers, "Content-Type")
    if ctype is not None and ctype.split(";", 1)[0].strip() == "application/grip-instruct":
        if code != 200:
            raise InstructError("response code for application/grip-instruct content must be 200")
        j = _parse_json_instruct(body)
        if "hold" in j:
            mode, jchannels, jtimeout, jka, jmeta = _json_hold(j["hold"])
            channels.extend(jchannels)
            if jtimeout is not None:
                timeout = jtimeout
            if jka is not None:
                keep_alive = jka
            meta.update(jmeta)
        out_headers, body = [], b""
        if "response" in j:
            code, reason, out_headers, body = _json_response(j["response"], code, reason)
    if not reason:
        reason = status_reason(code)
    timeout = max(DEFAULT_TIMEOUT_S if timeout is None else timeout, MIN_TIMEOUT_S)
    names = [Channel(prefix + c.name, c.prev_id, c.filters) for c in channels]
    if mode is not None:
        known = {c.name for c in names}
        names.extend(Channel(prefix + s) for s in extra_channels if prefix + s not in known)
    return with_body(
        Hold(
            mode=mode,
            channels=tuple(names[:MAX_CHANNELS]),
            timeout_s=timeout,
            keep_alive=keep_alive,
            next_link=next_link,
            next_link_timeout_s=next_timeout,
            gone_link=gone_link,
            meta=MappingProxyType(meta),
            code=code,
            reason=reason,
            headers=tuple(out_headers),
        ),
        body,
    )


def with_body(hold: Hold, body: bytes) -> Hold:
    """``hold`` with ``body`` as the client's initial body, through the proxy-content filters
    of its channels (``build-id``: ``%%`` -> ``%``; reference 2.8) unless it is a response
    hold (whose body is the timeout response, sent as is).  A filter error leaves the body
    empty and ``body_error`` set: Pushpin then sends the head and ends the response."""
    if body and hold.mode != "response":
        try:
            renderer = filters.proxy_renderer((c.filters for c in hold.channels), hold.meta)
            if renderer is not None:
                body = renderer.process(body)
        except filters.FilterError as exc:
            return replace(hold, body=b"", body_error=f"filter error: {exc}")
    return replace(hold, body=body) if body is not hold.body else hold


def _parse_json_instruct(body: bytes) -> dict[str, Any]:
    try:
        j = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InstructError("failed to parse application/grip-instruct content as JSON") from None
    if not isinstance(j, dict):
        raise InstructError("instruct must be an object")
    return j


def _json_int(obj: dict[str, Any], key: str, pn: str) -> int | None:
    if key not in obj:
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InstructError(f"{pn} contains '{key}' with wrong type")
    if v < 0:
        raise InstructError(f"{pn} contains '{key}' with invalid value")
    return int(v)


@overload
def _json_str(obj: dict[str, Any], key: str, pn: str, required: Literal[True]) -> str: ...
@overload
def _json_str(obj: dict[str, Any], key: str, pn: str, required: bool = False) -> str | None: ...
def _json_str(obj: dict[str, Any], key: str, pn: str, required: bool = False) -> str | None:
    if key not in obj:
        if required:
            raise InstructError(f"{pn} does not contain '{key}'")
        return None
    v = obj[key]
    if not isinstance(v, str):
        raise InstructError(f"{pn} contains '{key}' with wrong type")
    return v


def _json_hold(
    hold: object,
) -> tuple[str, list[Channel], int | None, KeepAlive | None, dict[str, str]]:
    if not isinstance(hold, dict):
        raise InstructError("instruct contains 'hold' with wrong type")
    mode = _json_str(hold, "mode", "hold") or "response"
    if mode not in ("response", "stream"):
        raise InstructError("hold 'mode' must be set to either 'response' or 'stream'")
    if not isinstance(hold.get("channels"), list):
        raise InstructError(
            "hold does not contain 'channels'"
            if "channels" not in hold
            else "hold contains 'channels' with wrong type"
        )
    channels = []
    for c in hold["channels"]:
        if not isinstance(c, dict):
            raise InstructError("channels contains element with wrong type")
        name = _json_str(c, "name", "channel", required=True)
        filters = c.get("filters", [])
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise InstructError("filters contains value with wrong type")
        channels.append(Channel(name, _json_str(c, "prev-id", "channel"), tuple(filters)))
    timeout = _json_int(hold, "timeout", "hold")
    ka = None
    vka = hold.get("keep-alive")
    if vka is not None:
        if not isinstance(vka, dict):
            raise InstructError("hold contains 'keep-alive' with wrong type")
        if "content-bin" in vka:
            data = _b64(_json_str(vka, "content-bin", "keep-alive") or "")
        else:
            data = (_json_str(vka, "content", "keep-alive") or "").encode("utf-8")
        kt = _json_int(vka, "timeout", "keep-alive")
        # Pushpin quirk kept: a JSON keep-alive is not reset by traffic (interval mode)
        ka = KeepAlive(data, max(DEFAULT_KEEPALIVE_S if kt is None else kt, 1), "interval")
    meta = hold.get("meta", {})
    if not isinstance(meta, dict):
        raise InstructError("hold contains 'meta' with wrong type")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise InstructError(f"'meta' contains '{k}' with wrong type")
    return mode, channels, timeout, ka, dict(meta)


def _json_response(
    resp: object,
    code: int,
    reason: str,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    if not isinstance(resp, dict):
        raise InstructError("instruct contains 'response' with wrong type")
    if "code" in resp:
        v = resp["code"]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InstructError("response contains 'code' with wrong type")
        code = int(v)
        if not 0 <= code <= 999:
            raise InstructError("response contains 'code' with invalid value")
        reason = ""
    r = _json_str(resp, "reason", "response")
    if r:
        reason = r
    headers: list[tuple[str, str]] = []
    vh = resp.get("headers")
    if isinstance(vh, list):
        for h in vh:
            if not isinstance(h, list):
                raise InstructError("headers contains element with wrong type")
            if len(h) != 2:
                raise InstructError("headers contains list with wrong number of elements")
            if not isinstance(h[0], str):
                raise InstructError("header contains name element with wrong type")
            if not isinstance(h[1], str):
                raise InstructError("header contains value element with wrong type")
            headers.append((h[0], h[1]))
    elif isinstance(vh, dict):
        for k, v in vh.items():
            if not isinstance(v, str):
                raise InstructError(f"headers contains '{k}' with wrong type")
            headers.append((k, v))
    elif vh is not None:
        raise InstructError("response contains 'headers' with wrong type")
    if "body-bin" in resp:
        body = _b64(_json_str(resp, "body-bin", "response") or "")
    elif "body" in resp:
        if not isinstance(resp["body"], str):
            raise InstructError("response contains 'body' with wrong type")
        body = resp["body"].encode("utf-8")
    else:
        body = b""
    return code, reason, clean_response_headers(headers), body
