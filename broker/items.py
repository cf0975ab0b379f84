"""Publish items: parsing Pushpin's publish inputs into one normalised ``Item`` (sans-IO).

Inputs (reference sections 3.1 to 3.4):

* ``parse_http_publish(body)``: the HTTP API's JSON ``{"items": [...]}``, all-or-nothing.
* ``parse_zmq_item(frame)``: one PULL frame: ``J`` + JSON, ``T`` + tnetstring, or a bare
  tnetstring (first byte neither ``J`` nor ``T``), or gripcast's ``M`` + one msgpack item.
  The item carries ``channel``.
* ``parse_pull_frame(frame)``: ``parse_zmq_item``, plus gripcast's ``B`` + a msgpack array of
  items (each item stands alone); returns (items, rejection reasons).  A bare tnetstring starts
  with a digit, so ``M`` and ``B`` frames were never valid Pushpin input.
* ``parse_sub_item(channel, payload)``: one SUB message; the channel is frame 1.
* ``parse_items(values, json=False)``: a list of already-decoded items (the command socket).

Formats may sit under ``formats`` or directly on the item (the legacy shape pypubcontrol's HTTP
client sends).  Errors raise ``PublishError`` whose ``reason`` is Pushpin's message text; the
HTTP API and command socket prefix item errors with ``"Invalid format: "`` as Pushpin does.

msgpack items have the JSON shape (str keys); a msgpack bin is accepted wherever JSON has a
string (as UTF-8 text) and, for ``content``/``body``, as the raw bytes.

The usual item shape (send formats with plain content, no options) is normalised by
``_speedups``' ``normalise_item`` (a Cython twin); anything else, and every error, goes through
the complete parser here, so messages are the same either way.

In JSON input, ``content-bin``/``body-bin`` are base64.  In tnetstring input, every string is a
byte string: ``content``/``body`` carry raw bytes, ``body-bin`` and the http-stream
``content-bin`` are ignored (as in Pushpin), and the ws-message ``content-bin`` is raw bytes.

Normalised formats: the contract with edges (an ``Item``'s and an ``Envelope``'s ``formats``)
-------------------------------------------------------------------------------------------

Only the keys below appear, always all of them for a format, with these types::

    "http-stream":   {"action": "send" | "close" | "hint",
                      "content": bytes}                     # b"" unless action is "send"
    "http-response": {"action": "send" | "hint",
                      "code": int,                          # 0..999, default 200
                      "reason": str,                        # default from Pushpin's status table
                      "headers": [[str, str], ...],         # order kept; dict input -> pairs
                      "body": bytes | None,                 # None when body-patch is used, or hint
                      "body-patch": list | None}            # a JSON Patch list, or None
    "ws-message":    {"action": "send" | "close" | "refresh" | "hint",
                      "type": "text" | "binary" | "ping" | "pong",
                      "content": bytes,                     # b"" for ping/pong without content
                      "code": int | None,                   # close code (action "close")
                      "reason": str}                        # close reason ("" if none)

plus, on any format, ``"content-filters": [str, ...]`` when the publisher gave it.  Pushpin
accepts ``close``/``refresh`` on http-response and ``refresh`` on http-stream but does nothing
with them; such formats are dropped here.  ``type`` for a non-send ws-message is ``"text"``.

Channels are validated: a non-empty string, no NUL byte (the fan-out framing uses NUL), at
most ``MAX_CHANNEL_BYTES`` bytes of UTF-8.  An empty ``id``/``prev-id`` is treated as absent.
"""

from __future__ import annotations

import base64
import json as _json
import json.scanner
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, overload

import msgpack

from _speedups import digit_run, normalise_item, parse_j_frames, payload_bytes, unpack_batch
from broker.errors import PublishError, RemoteProtocolError
from broker.ingest import tnetstring

_orjson_loads: Callable[[bytes], Any] | None
try:
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - a dependency; _json_loads_std is complete without it
    _orjson_loads = None

MAX_CHANNEL_BYTES = 1024
# A publisher id / prev-id travels to origins in Grip-Last and to clients in SSE ``id:``
# lines: text without control characters (CR, LF, NUL, ...), at most this many UTF-8 bytes.
MAX_ID_BYTES = 1024
# ``body-patch`` limits, shared with the edge's ``edge.grip.jsonpatch`` (its second line): a copy
# from the root doubles a document, so 30 ops made gigabytes; a value nested ~500 deep made
# the edge's recursion fail.  The result cap is ten times Pushpin's 100,000-byte response
# bodies: a patched long-poll answer is a JSON document of that order.
MAX_PATCH_OPS = 100
MAX_PATCH_DEPTH = 64
MAX_PATCH_RESULT_BYTES = 1 << 20
# A published reason phrase (RFC 9112 ``reason-phrase``: HTAB, SP, VCHAR, obs-text) is at most
# this long; header names are RFC 9110 tokens, values field text without CR, LF, NUL.
MAX_REASON_CHARS = 512
# One item's payload (the content/body of its formats together): history keeps up to
# ``history_max_items`` of them per channel and ZeroMQ frames may be 16 MiB, so a bound per
# item (refused with 413) and a byte budget per channel (``history_max_bytes``) keep broker
# memory bounded.  Ten times Pushpin's 100,000-byte bodies; the HTTP API takes 1,000,000-byte
# requests.
MAX_ITEM_BYTES = 1 << 20
FORMAT_NAMES = ("http-response", "http-stream", "ws-message")

# Pushpin's reason phrases (PP:src/core/statusreasons.cpp); anything else is "Undefined Reason".
# The one table of the project: the broker (publish API, http-response items) and the edge
# (Grip-Status without a reason, its own error responses) both use ``status_reason``; never
# Python's http.HTTPStatus, whose phrases changed in 3.13 (413 "Content Too Large").
STATUS_REASONS = {
    100: "Continue",
    101: "Switching Protocols",
    102: "Processing",
    200: "OK",
    201: "Created",
    202: "Accepted",
    203: "Non-Authoritative Information",
    204: "No Content",
    205: "Reset Content",
    206: "Partial Content",
    207: "Multi-Status",
    208: "Already Reported",
    226: "IM Used",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    305: "Use Proxy",
    306: "Reserved",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable",
    417: "Expectation Failed",
    422: "Unprocessable Entity",
    423: "Locked",
    424: "Failed Dependency",
    426: "Upgrade Required",
    428: "Precondition Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates",
    507: "Insufficient Storage",
    508: "Loop Detected",
    510: "Not Extended",
    511: "Network Authentication Required",
}


# One normalised format (its keys and their types: the module docstring), and an item's formats
# by name ("http-response", "http-stream", "ws-message")
Format: TypeAlias = dict[str, Any]
Formats: TypeAlias = dict[str, Format]

# gripcast's msgpack items (``M``/``B`` frames) have the JSON shape: str keys, and a msgpack
# bin is accepted wherever JSON has a string (as UTF-8 text) and as raw bytes for content/body
_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def status_reason(code: int) -> str:
    return STATUS_REASONS.get(code, "Undefined Reason")


@dataclass(frozen=True, slots=True)
class Item:
    """One published message for one channel, formats normalised (see the module docstring)."""

    channel: str
    formats: Formats
    id: str | None = None
    prev_id: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    no_seq: bool = False


# -- entry points ------------------------------------------------------------------------------


def _has_lone_surrogate(value: Any) -> bool:
    if type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if type(value) is dict:
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if type(value) is list:
        return any(_has_lone_surrogate(v) for v in value)
    return False


_OPENERS = (b"{", b"[")
LONG_DIGITS = 19  # -2**63 - 1 and 2**64, the integers nearest 0 that orjson gives as floats
_scan_once = _json.scanner.make_scanner(_json.JSONDecoder())  # type: ignore[arg-type]


def _json_loads(data: bytes) -> Any:
    """``_json_loads_std`` (``json.loads`` refusing unpaired surrogate escapes): the same value,
    the same errors, through ``orjson`` (about half the cost) when the body is one it decodes
    the same way.

    ``orjson`` refuses everything ``_json_loads_std`` refuses, and a little more: ``NaN`` and
    ``Infinity``, numbers beyond a double, nesting past 1,024 levels, a UTF-8 byte-order mark,
    unpaired surrogate escapes; those fall to ``_json_loads_std``, which accepts or refuses
    them as before.  What it accepts it decodes to the same value (floats rounded alike:
    ``tests/broker/test_items_json.py``), except integers outside 64 bits, which it turns into
    floats: a body with a run of ``LONG_DIGITS`` digits anywhere (the shortest such integer
    has 19) goes to ``_json_loads_std`` whole.
    """
    if _orjson_loads is not None and data[:1] in _OPENERS and not digit_run(data, LONG_DIGITS):
        try:
            return _orjson_loads(data)
        except ValueError:  # orjson.JSONDecodeError: the error (or the value) is the stdlib's
            pass
    return _json_loads_std(data)


def _json_loads_std(data: bytes) -> Any:
    """``json.loads`` that refuses unpaired ``\\uD800``-``\\uDFFF`` escapes (not encodable text).

    UTF-8 input is decoded strictly, so it cannot carry surrogates (UTF-8-encoded surrogate
    bytes are refused, as invalid UTF-8); then only JSON escapes can, and the walk runs only
    when the text contains one.  Other encodings (``json.loads``' detection) are walked always.
    """
    if data[:1] in _OPENERS and 0 not in data[:4]:
        # the usual body: UTF-8 from its first byte (json.loads would detect just that), an
        # object or array at offset 0: the C scanner straight on the text, without
        # json.loads' encoding detection and its two whitespace matches (same value, same
        # errors: a JSONDecodeError, a ValueError, for extra data)
        text = data.decode("utf-8")
        try:
            value, end = _scan_once(text, 0)
        except StopIteration as exc:
            raise _json.JSONDecodeError("Expecting value", text, exc.value) from None
        if end != len(text) and text[end:].strip(" \t\n\r"):
            raise _json.JSONDecodeError("Extra data", text, end)
    else:
        value = _json.loads(data)  # (it decodes with "surrogatepass")
        if _has_lone_surrogate(value):
            raise ValueError("unpaired surrogate")
        return value
    lowered = data.lower() if b"\\u" in data else b""
    if b"\\ud" in lowered and _has_lone_surrogate(value):
        raise ValueError("unpaired surrogate escape")
    return value


def parse_http_publish(body: bytes) -> list[Item]:
    """Parse an HTTP ``POST /publish`` body; raise PublishError with Pushpin's message."""
    try:
        doc = _json_loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise PublishError("Body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise PublishError("Invalid format.")
    return parse_items_container(doc, json=True)


def parse_items_container(doc: dict[Any, Any], *, json: bool) -> list[Item]:
    """Parse ``{"items": [...]}`` (decoded JSON, or tnetstring command args with bytes keys)."""
    key = "items" if json else b"items"
    if key not in doc:
        raise PublishError("Invalid format: object does not contain 'items'")
    values = doc[key]
    if not isinstance(values, list):
        raise PublishError("Invalid format: object contains 'items' with wrong type")
    try:
        return parse_items(values, json=json)
    except PublishError as exc:
        raise PublishError(f"Invalid format: {exc.reason}") from None


def parse_items(values: list[Any], *, json: bool) -> list[Item]:
    """Parse every item of ``values`` (all-or-nothing); errors carry Pushpin's item message.

    ``parse_item`` inlined for the usual item (a dict ``normalise_item`` builds, within
    ``MAX_ITEM_BYTES``): two Python calls less an item in a 100-item body."""
    out: list[Item] = []
    add = out.append
    for v in values:
        if type(v) is dict:
            item = normalise_item(v, None, json, Item)
            if item is not None and payload_bytes(item.formats) <= MAX_ITEM_BYTES:
                add(item)
                continue
        add(parse_item(v, json=json))
    return out


def parse_zmq_item(frame: bytes) -> Item:
    """Parse one PULL frame (``J`` + JSON, ``T`` + tnetstring, or a bare tnetstring)."""
    value, is_json = _decode_payload(frame)
    return parse_item(value, json=is_json)


def parse_sub_item(channel: bytes, payload: bytes) -> Item:
    """Parse one SUB message: frame 1 is the channel, frame 2 the item (framed as on PULL)."""
    try:
        name = bytes(channel).decode("utf-8")
    except UnicodeDecodeError:
        raise PublishError("channel is not valid UTF-8") from None
    value, is_json = _decode_payload(payload)
    return parse_item(value, channel=name, json=is_json)


def parse_pull_frames(frames: list[bytes]) -> tuple[list[Item], list[str]]:
    """``parse_pull_frame`` for each of ``frames`` (one PULL read), items and rejection
    reasons in frame order.  The usual frame, ``J`` and a JSON object ``normalise_item``
    takes within ``MAX_ITEM_BYTES``, is parsed in one compiled loop (``_speedups``'
    ``parse_j_frames``, no Python frame per item); any other frame, or one the fast path does
    not take, goes to ``parse_pull_frame``."""
    return parse_j_frames(
        frames, _scan_once, Item, MAX_ITEM_BYTES, parse_pull_frame, _orjson_loads, LONG_DIGITS
    )


def parse_pull_frame(frame: bytes) -> tuple[list[Item], list[str]]:
    """Parse one PULL frame: Pushpin's three framings (one item) or gripcast's ``M`` (one
    msgpack item) and ``B`` (a msgpack array of items).  Returns the items and the reasons of
    the items rejected: the items of a ``B`` batch stand alone, as if each came in its own
    frame, so one bad item does not lose the others."""
    kind = frame[:1]
    if kind == b"J" and type(frame) is bytes:
        # Pushpin's usual framing (gripcontrol's ZeroMQ publishers), one item: a JSON object
        # goes straight to parse_item; anything else (bad JSON, not an object) takes the full
        # path below, which gives those errors their message
        try:
            value = _json_loads(frame[1:])
        except (ValueError, UnicodeDecodeError, RecursionError):
            value = None
        if type(value) is dict:  # what parse_zmq_item does after decoding, minus its layers
            try:
                return [parse_item(value, json=True)], []
            except PublishError as exc:
                return [], [exc.reason]
    if kind != b"B":
        try:
            return [parse_zmq_item(frame)], []
        except PublishError as exc:
            return [], [exc.reason]
    try:
        # the usual items come back normalised already (_speedups' unpack_batch)
        values = unpack_batch(bytes(frame[1:]), Item)
    except _MSGPACK_ERRORS:
        return [], ["received message with invalid format (msgpack parse failed)"]
    if type(values) is not list:
        return [], ["received message with invalid format (not a valid msgpack array)"]
    items: list[Item] = []
    errors: list[str] = []
    if all(type(value) is Item for value in values):
        if all(item_bytes(value) <= MAX_ITEM_BYTES for value in values):
            return values, []
    for value in values:
        if type(value) is Item:
            try:
                items.append(check_item_size(value))
            except PublishError as exc:
                errors.append(exc.reason)
            continue
        if type(value) is not dict:
            errors.append("received message with invalid format (not a valid msgpack map)")
            continue
        try:
            items.append(check_item_size(_parse_item_full(value, json=True)))
        except PublishError as exc:
            errors.append(exc.reason)
    return items, errors


def _decode_payload(frame: bytes) -> tuple[Any, bool]:
    frame = bytes(frame)
    if frame[:1] == b"M":
        try:
            value = _unpackb(frame[1:])
        except _MSGPACK_ERRORS:
            raise PublishError(
                "received message with invalid format (msgpack parse failed)"
            ) from None
        if type(value) is not dict:
            raise PublishError("received message with invalid format (not a valid msgpack map)")
        return value, True
    if frame[:1] == b"J":
        try:
            value = _json_loads(frame[1:])
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PublishError("received message with invalid format (json parse failed)") from None
        if not isinstance(value, dict):
            raise PublishError("received message with invalid format (not a valid json object)")
        return value, True
    try:
        value = tnetstring.loads(frame[1:] if frame[:1] == b"T" else frame)
    except RemoteProtocolError:
        raise PublishError(
            "received message with invalid format (tnetstring parse failed)"
        ) from None
    return value, False


# -- one item ----------------------------------------------------------------------------------

_ITEM = "publish item object"


class _Obj:
    """Uniform access to a JSON object (str keys) or a tnetstring dict (bytes keys)."""

    __slots__ = ("d", "json", "name")

    def __init__(self, d: dict[Any, Any], json: bool, name: str) -> None:
        self.d = d
        self.json = json
        self.name = name

    def _k(self, key: str) -> Any:
        return key if self.json else key.encode()

    def has(self, key: str) -> bool:
        return self.d.get(self._k(key)) is not None

    def get(self, key: str) -> Any:
        return self.d.get(self._k(key))

    def wrong(self, key: str) -> PublishError:
        return PublishError(f"{self.name} contains '{key}' with wrong type")

    def invalid(self, key: str, why: str = "") -> PublishError:
        extra = f" ({why})" if why else ""
        return PublishError(f"{self.name} contains '{key}' with invalid value{extra}")

    @overload
    def string(self, key: str, required: Literal[True]) -> str: ...
    @overload
    def string(self, key: str, required: bool = False) -> str | None: ...

    def string(self, key: str, required: bool = False) -> str | None:
        v = self.get(key)
        if v is None:
            if required:
                raise PublishError(f"{self.name} does not contain '{key}'")
            return None
        s = _as_str(v)
        if s is None:
            raise self.wrong(key)
        return s

    def integer(self, key: str) -> int | None:
        v = self.get(key)
        if v is None:
            return None
        n = _as_int(v)
        if n is None:
            raise self.wrong(key)
        return n

    def string_list(self, key: str) -> list[str] | None:
        v = self.get(key)
        if v is None:
            return None
        if not isinstance(v, list):
            raise self.wrong(key)
        out = []
        for e in v:
            s = _as_str(e)
            if s is None:
                raise PublishError(f"{key} contains element with wrong type")
            out.append(s)
        return out


def _as_str(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _key(k: Any) -> str:
    s = _as_str(k)
    return repr(k) if s is None else s


def _as_bytes(v: Any) -> bytes | None:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() else None
    s = _as_str(v)
    if s is not None:
        try:
            return int(s.strip())
        except ValueError:
            return None
    return None


def _b64(text: str) -> bytes:
    """Decode base64 leniently, like Qt's ``fromBase64``: skip junk, tolerate missing padding."""
    raw = "".join(c for c in text if c.isascii() and (c.isalnum() or c in "+/-_"))
    raw = raw.replace("-", "+").replace("_", "/")
    if len(raw) % 4 == 1:
        raw = raw[:-1]
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def validate_channel(channel: str, where: str = _ITEM) -> str:
    """Check a channel name (non-empty, no NUL, bounded); return it or raise PublishError."""
    if not channel:
        raise PublishError(f"{where} contains 'channel' with invalid value (empty)")
    if "\x00" in channel:
        raise PublishError(f"{where} contains 'channel' with invalid value (NUL byte)")
    if len(channel.encode("utf-8")) > MAX_CHANNEL_BYTES:
        raise PublishError(
            f"{where} contains 'channel' with invalid value (longer than {MAX_CHANNEL_BYTES} bytes)"
        )
    return channel


_CONTROL = re.compile("[\x00-\x1f\x7f]").search
_REASON_BAD = re.compile("[\x00-\x08\x0a-\x1f\x7f]").search
_TOKEN = re.compile("[!#$%&'*+\\-.^_`|~0-9A-Za-z]+").fullmatch
_FIELD_BAD = _REASON_BAD


def validate_id(value: str | None, key: str = "id", where: str = _ITEM) -> str | None:
    """Check a publisher ``id``/``prev-id`` (no control character, at most MAX_ID_BYTES)."""
    if value is None:
        return None
    if _CONTROL(value):
        raise PublishError(f"{where} contains '{key}' with invalid value (control character)")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise PublishError(
            f"{where} contains '{key}' with invalid value (longer than {MAX_ID_BYTES} bytes)"
        )
    return value


def is_token(name: str) -> bool:
    """An RFC 9110 token (a header name)."""
    return _TOKEN(name) is not None


def is_field_text(value: str) -> bool:
    """Header field value / reason phrase text: no control character but HTAB (so no CR, LF,
    NUL)."""
    return _FIELD_BAD(value) is None


def check_patch(ops: list[Any]) -> str | None:
    """Why a ``body-patch`` list is past the limits (MAX_PATCH_*), or None."""
    if len(ops) > MAX_PATCH_OPS:
        return f"more than {MAX_PATCH_OPS} operations"
    # iterative walk: a value nested far deeper than the limit must not recurse here either
    size = 0
    stack = [(ops, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_PATCH_DEPTH + 1:  # the list 0, an op 1, its value 2
                return f"value nested deeper than {MAX_PATCH_DEPTH}"
            size += 2 + len(value)
            for k, v in value.items():
                size += len(k) + 3 if isinstance(k, (str, bytes)) else 8
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_PATCH_DEPTH + 1:  # the list 0, an op 1, its value 2
                return f"value nested deeper than {MAX_PATCH_DEPTH}"
            size += 2 + len(value)
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, (str, bytes, bytearray)):
            size += len(value) + 2
        else:
            size += 8
        if size > MAX_PATCH_RESULT_BYTES:
            return f"operations over {MAX_PATCH_RESULT_BYTES} bytes"
    return None


class HasFormats(Protocol):
    """What ``item_bytes`` reads: an ``Item`` or a ``broker.wire.Envelope``."""

    @property
    def formats(self) -> Formats: ...


def item_bytes(item: HasFormats) -> int:
    """The payload bytes of ``item``'s formats (what ``MAX_ITEM_BYTES`` bounds): each
    format's content, else its body (``_speedups.payload_bytes``)."""
    return payload_bytes(item.formats)


def check_item_size(item: Item) -> Item:
    if payload_bytes(item.formats) > MAX_ITEM_BYTES:
        raise PublishError(f"{_ITEM} is larger than {MAX_ITEM_BYTES} bytes", status=413)
    return item


def parse_item(value: Any, *, channel: str | None = None, json: bool) -> Item:
    """Parse one decoded item (JSON object or tnetstring dict); see the module docstring."""
    if type(value) is dict:
        # the usual shape, built fast (_speedups/_items_*.py); None: anything else, and errors
        item = normalise_item(value, channel, json, Item)
        if item is not None:
            return check_item_size(item)
    return check_item_size(_parse_item_full(value, channel=channel, json=json))


def _parse_item_full(value: Any, *, channel: str | None = None, json: bool) -> Item:
    """The complete parser: every shape, and every error with Pushpin's message."""
    if not isinstance(value, dict):
        raise PublishError(f"{_ITEM} is not an object")
    obj = _Obj(value, json, _ITEM)
    if not channel:
        channel = obj.string("channel", required=True)
    validate_channel(channel)
    item_id = validate_id(obj.string("id") or None, "id")
    prev_id = validate_id(obj.string("prev-id") or None, "prev-id")

    vformats = obj.get("formats")
    if vformats is not None and not isinstance(vformats, dict):
        raise obj.wrong("formats")
    if vformats is None:
        vformats = {obj._k(k): value[obj._k(k)] for k in FORMAT_NAMES if obj.has(k)}
    fobj = _Obj(vformats, json, "formats")
    present = [name for name in FORMAT_NAMES if fobj._k(name) in vformats]
    if not present:
        raise PublishError("no formats specified")
    formats: Formats = {}
    for name in present:
        parsed = _parse_format(name, vformats[fobj._k(name)], json)
        if parsed is not None:
            formats[name] = parsed

    meta: dict[str, str] = {}
    vmeta = obj.get("meta")
    if vmeta is not None:
        if not isinstance(vmeta, dict):
            raise obj.wrong("meta")
        for k, v in vmeta.items():
            ks = _key(k)
            vs = _as_str(v)
            if vs is None:
                raise PublishError(f"'meta' contains '{ks}' with wrong type")
            meta[ks] = vs

    size = obj.get("size")
    if size is not None:
        n = _as_int(size)
        if n is None:
            raise obj.wrong("size")
        if n < 0:
            raise obj.invalid("size")

    no_seq = obj.get("no-seq")
    if no_seq is not None and not isinstance(no_seq, bool):
        raise obj.wrong("no-seq")

    return Item(
        channel=channel,
        formats=formats,
        id=item_id,
        prev_id=prev_id,
        meta=meta,
        no_seq=bool(no_seq),
    )


# -- formats -----------------------------------------------------------------------------------

_ACTIONS: dict[str, dict[str, str | None]] = {
    "http-stream": {"send": "send", "close": "close", "hint": "hint", "refresh": None},
    "http-response": {"send": "send", "hint": "hint", "close": None, "refresh": None},
    "ws-message": {"send": "send", "close": "close", "refresh": "refresh", "hint": "hint"},
}
_WS_TYPES = ("text", "binary", "ping", "pong")


def _parse_format(name: str, value: Any, json: bool) -> Format | None:
    """Parse one format; None when Pushpin accepts it but ignores it (see module docstring)."""
    pn = f"'{name}'"
    if not isinstance(value, dict):
        raise PublishError(f"{pn} is not an object")
    f = _Obj(value, json, pn)
    action = f.string("action") or "send"
    if action not in _ACTIONS[name]:
        raise PublishError("")  # Pushpin answers "Invalid format: " with nothing after it
    if name == "http-response":
        out = _http_response(f, action)
    elif name == "http-stream":
        out = _http_stream(f, action)
    else:
        out = _ws_message(f, action)
    mapped = _ACTIONS[name][action]
    if mapped is None:
        return None
    out["action"] = mapped
    return out


def _filters(f: _Obj, out: Format) -> None:
    filters = f.string_list("content-filters")
    if filters is not None:
        out["content-filters"] = filters


def _http_response(f: _Obj, action: str) -> Format:
    out: Format = {
        "action": action,
        "code": 200,
        "reason": "OK",
        "headers": [],
        "body": None,
        "body-patch": None,
    }
    if action != "send":
        return out
    code = f.integer("code")
    if code is None:
        code = 200
    elif not 0 <= code <= 999:
        raise f.invalid("code")
    out["code"] = code
    reason = f.string("reason")
    if reason and (not is_field_text(reason) or len(reason) > MAX_REASON_CHARS):
        raise f.invalid(
            "reason",
            "control character"
            if len(reason) <= MAX_REASON_CHARS
            else f"longer than {MAX_REASON_CHARS} characters",
        )
    out["reason"] = reason or status_reason(code)
    vheaders = f.get("headers")
    if vheaders is not None:
        out["headers"] = _headers(vheaders, f)
    _filters(f, out)
    if f.json and f.has("body-bin"):
        text = f.string("body-bin")
        out["body"] = _b64(text or "")
    elif f.has("body"):
        body = _as_bytes(f.get("body"))
        if body is None:
            raise f.wrong("body")
        out["body"] = body
    elif f.has("body-patch"):
        patch = f.get("body-patch")
        if not isinstance(patch, list):
            raise f.wrong("body-patch")
        why = check_patch(patch)
        if why is not None:
            raise f.invalid("body-patch", why)
        try:  # it travels to edges in the msgpack envelope: refuse what cannot (ints >= 2**64)
            msgpack.packb(patch)
        except (OverflowError, TypeError, ValueError):
            raise f.wrong("body-patch") from None
        out["body-patch"] = patch
    elif f.json:
        raise PublishError(f"{f.name} does not contain 'body', 'body-bin', or 'body-patch'")
    else:
        raise PublishError(f"{f.name} does not contain 'body' or 'body-patch'")
    return out


def _headers(vheaders: Any, f: _Obj) -> list[list[str]]:
    out: list[list[str]] = []
    if isinstance(vheaders, list):
        for h in vheaders:
            if not isinstance(h, list):
                raise PublishError("headers contains element with wrong type")
            if len(h) != 2:
                raise PublishError("headers contains list with wrong number of elements")
            name, val = _as_str(h[0]), _as_str(h[1])
            if name is None:
                raise PublishError("header contains name element with wrong type")
            if val is None:
                raise PublishError("header contains value element with wrong type")
            out.append([name, val])
    elif isinstance(vheaders, dict):
        for k, v in vheaders.items():
            name = _key(k)
            val = _as_str(v)
            if val is None:
                raise PublishError(f"headers contains '{name}' with wrong type")
            out.append([name, val])
    else:
        raise f.wrong("headers")
    for name, val in out:
        if not is_token(name) or not is_field_text(val):
            raise PublishError(f"headers contains '{name}' with invalid value")
    return out


def _http_stream(f: _Obj, action: str) -> Format:
    out: Format = {"action": action, "content": b""}
    if action != "send":
        return out
    _filters(f, out)
    if f.json and f.has("content-bin"):
        out["content"] = _b64(f.string("content-bin") or "")
    elif f.has("content"):
        content = _as_bytes(f.get("content"))
        if content is None:
            raise f.wrong("content")
        out["content"] = content
    elif f.json:
        raise PublishError(f"{f.name} does not contain 'content' or 'content-bin'")
    else:
        raise PublishError(f"{f.name} does not contain 'content'")
    return out


def _ws_message(f: _Obj, action: str) -> Format:
    out: Format = {"action": action, "type": "text", "content": b"", "code": None, "reason": ""}
    if action == "send":
        mtype = f.string("type")
        if mtype is not None and mtype not in _WS_TYPES:
            raise PublishError(f"{f.name} contains 'type' with unknown value")
        _filters(f, out)
        if f.has("content-bin"):
            v = f.get("content-bin")
            if f.json:
                if not isinstance(v, str):
                    raise f.wrong("content-bin")
                out["content"] = _b64(v)
            else:
                if not isinstance(v, (bytes, bytearray)):
                    raise f.wrong("content-bin")
                out["content"] = bytes(v)
            out["type"] = mtype or "binary"
        elif f.has("content"):
            content = _as_bytes(f.get("content"))
            if content is None:
                raise f.wrong("content")
            out["content"] = content
            out["type"] = mtype or "text"
        elif mtype in (None, "text", "binary"):
            raise PublishError(f"{f.name} does not contain 'content' or 'content-bin'")
        else:
            out["type"] = mtype
    elif action == "close":
        code = f.integer("code")
        if code is not None and code < 0:
            raise f.invalid("code")
        out["code"] = code
        out["reason"] = f.string("reason") or ""
    return out
