"""GRIP over a WebSocket session (sans-IO; reference 4.1): the ``grip`` extension and ``c:``
control messages.

* ``grip_prefix(values)``: an origin's ``Sec-WebSocket-Extensions`` values -> the message
  prefix when GRIP is enabled (``grip`` alone means ``m:``; ``grip; message-prefix=""`` means
  none), or None when it is not.
* ``classify(text, prefix)``: one single-frame TEXT message from the origin, when GRIP is on ->
  ``("control", Control)``, ``("message", payload_without_prefix)`` or ``("drop", reason)``.
  BINARY messages go through ``strip_prefix``.
* ``parse_control(data)``: the JSON object after ``c:`` -> a frozen control record, or
  ``WsControlError`` (``close_code`` 1011 where Pushpin closes the connection, else the message is
  ignored with a warning).

Deviation from Pushpin, on purpose: ``keep-alive``/``send-delayed`` with ``content-bin`` and no
``message-type`` send a binary message (Pushpin keeps the type ``text``, which would put
arbitrary bytes in a text frame).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal, overload

from broker.errors import RemoteProtocolError
from edge.http1.headers import all_params, param_get

DEFAULT_PREFIX = "m:"
MAX_CHANNELS = 20
MAX_FILTERS = 5
KEEP_ALIVE_DEFAULT_S = 55.0
SEND_DELAYED_DEFAULT_S = 1.0
MESSAGE_TYPES = ("text", "binary", "ping", "pong")


class WsControlError(RemoteProtocolError):
    def __init__(self, reason: str, close_code: int = 0) -> None:
        super().__init__(reason, status=502, close_code=close_code)


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    filters: tuple[str, ...] = ()
    prev_id: str | None = None  # gripcast's reliable WebSocket: replay what came after it


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Detach:
    pass


@dataclass(frozen=True, slots=True)
class SessionId:
    id: str


@dataclass(frozen=True, slots=True)
class SetMeta:
    name: str
    value: str | None  # None deletes


@dataclass(frozen=True, slots=True)
class OutMessage:
    type: str  # text | binary | ping | pong
    content: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    message: OutMessage | None  # None disables
    timeout_s: float
    mode: str  # idle | interval


@dataclass(frozen=True, slots=True)
class SendDelayed:
    message: OutMessage
    timeout_s: float


@dataclass(frozen=True, slots=True)
class FlushDelayed:
    pass


Control = (
    Subscribe | Unsubscribe | Detach | SessionId | SetMeta | KeepAlive | SendDelayed | FlushDelayed
)
# what strip_prefix and classify return: the message without its prefix, or why it is dropped
Stripped = tuple[Literal["message"], bytes] | tuple[Literal["drop"], str]
Classified = tuple[Literal["control"], Control] | Stripped


def grip_prefix(values: list[str]) -> str | None:
    headers = [("Sec-WebSocket-Extensions", v) for v in values]
    for params in all_params(headers, "Sec-WebSocket-Extensions"):
        if params and params[0][0].lower() == "grip":
            prefix = param_get(params, "message-prefix")
            return DEFAULT_PREFIX if prefix is None else prefix
    return None


def grip_extension(values: list[str]) -> bytes:
    """The ``grip`` entries of ``Sec-WebSocket-Extensions`` values, as given (with their
    parameters), for relaying to a trusted GRIP proxy in front; ``b""``: none."""
    each = ",".join(values).split(",")
    grip = [e.strip() for e in each if e.split(";", 1)[0].strip().lower() == "grip"]
    return ", ".join(grip).encode("latin-1")


def _num(v: object, name: str, default: float) -> float:
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise WsControlError(f"{name} must be a non-negative number")
    return float(v)


@overload
def _message(obj: dict[str, Any], required: Literal[True]) -> OutMessage: ...
@overload
def _message(obj: dict[str, Any], required: bool) -> OutMessage | None: ...
def _message(obj: dict[str, Any], required: bool) -> OutMessage | None:
    mtype = obj.get("message-type")
    if mtype is not None and mtype not in MESSAGE_TYPES:
        raise WsControlError(f"unknown message-type {mtype!r}")
    if "content-bin" in obj:
        try:
            content = base64.b64decode(obj["content-bin"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise WsControlError("content-bin is not base64") from None
        return OutMessage(mtype or "binary", content)
    if "content" in obj:
        c = obj["content"]
        if not isinstance(c, str):
            raise WsControlError("content must be a string")
        return OutMessage(mtype or "text", c.encode("utf-8"))
    if required:
        raise WsControlError("missing content")
    return None


def parse_control(data: bytes | str) -> Control:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WsControlError("control message is not JSON") from None
    if not isinstance(obj, dict):
        raise WsControlError("control message is not an object")
    kind = obj.get("type")
    if kind == "subscribe":
        ch = obj.get("channel")
        if not isinstance(ch, str) or not ch or "\x00" in ch:
            raise WsControlError("subscribe needs a channel")
        filters = obj.get("filters") or []
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise WsControlError("filters must be a list of strings")
        if len(filters) > MAX_FILTERS:
            raise WsControlError("too many filters", close_code=1011)
        prev = obj.get("prev-id")
        if prev is not None and (not isinstance(prev, str) or not prev):
            raise WsControlError("prev-id must be a non-empty string")
        return Subscribe(ch, tuple(filters), prev)
    if kind == "unsubscribe":
        ch = obj.get("channel")
        if not isinstance(ch, str) or not ch:
            raise WsControlError("unsubscribe needs a channel")
        return Unsubscribe(ch)
    if kind == "detach":
        return Detach()
    if kind == "session":
        sid = obj.get("id") or ""
        return SessionId(str(sid))
    if kind == "set-meta":
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise WsControlError("set-meta needs a name")
        value = obj.get("value")
        return SetMeta(name, None if value is None else str(value))
    if kind == "keep-alive":
        mode = obj.get("mode", "idle")
        if mode not in ("idle", "interval"):
            raise WsControlError(f"unknown keep-alive mode {mode!r}")
        return KeepAlive(
            _message(obj, False), _num(obj.get("timeout"), "timeout", KEEP_ALIVE_DEFAULT_S), mode
        )
    if kind == "send-delayed":
        return SendDelayed(
            _message(obj, True), _num(obj.get("timeout"), "timeout", SEND_DELAYED_DEFAULT_S)
        )
    if kind == "flush-delayed":
        return FlushDelayed()
    raise WsControlError(f"unknown control message type {kind!r}")


def classify(data: bytes, prefix: str) -> Classified:
    """One TEXT message from a GRIP-enabled origin: control, message or drop."""
    if data.startswith(b"c:"):
        return "control", parse_control(data[2:])
    return strip_prefix(data, prefix)


def strip_prefix(data: bytes, prefix: str) -> Stripped:
    p = prefix.encode("utf-8")
    if data.startswith(p):
        return "message", data[len(p) :]
    return "drop", "unprefixed message"
