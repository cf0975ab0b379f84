"""The usual published item, normalised fast (pure-Python twin of ``_items_c``).

``normalise_item(value, channel, json, item_cls)`` builds an ``item_cls`` (``broker.items.Item``:
a frozen slotted class with fields channel, formats, id, prev_id, meta, no_seq) for the one
common shape of a decoded publish item, and returns None for anything else: then
``broker.items``' complete parser decides (and raises every error with Pushpin's message), so
this function never raises for bad input and never returns what the complete parser would not.

The shape: ``channel`` a non-empty string of at most 256 characters without NUL (or the given
``channel``), ``id``/``prev-id`` strings of at most 256 characters without control characters
or absent (empty means absent), ``formats`` a map (or
the legacy shape: formats on the item itself) whose formats all have action ``send`` (or none),
plain ``content``/``body`` (str: UTF-8 encoded; bytes as they are) and no other option
(``content-filters``, ``type``, ``code``, ``reason``, ``headers``, and in JSON ``content-bin``
/ ``body-bin``), ``meta`` absent (or, in JSON, a map of strings), no ``size``, ``no-seq`` absent
or a bool.  ``json`` says the item's keys are str (JSON, msgpack) rather than bytes
(tnetstring).  Values may be str or (UTF-8) bytes in either case, as the complete parser accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from msgpack import unpackb as _unpackb

_T = TypeVar("_T")

_MISSING = object()
# ids the complete parser might refuse (a control character; possibly over its 1024 UTF-8
# bytes: more than 256 characters) go to it
_ID_BAD = re.compile("[\x00-\x1f\x7f]").search
MAX_FAST_ID_CHARS = 256
_FIELDS = ("channel", "formats", "id", "prev_id", "meta", "no_seq")
# the meta of every item published without one: one dict, never written to (items are frozen;
# a retained message then costs no empty dict of its own, 64 bytes)
NO_META: dict[str, str] = {}
_setters: dict[type, tuple[Any, ...]] = {}
if TYPE_CHECKING:

    def _new(cls: type[_T]) -> _T: ...  # object.__new__, typed for the class it makes
else:
    _new = object.__new__


class _Normalise(Protocol):
    def __call__(
        self, value: dict[Any, Any], channel: str | None, item_cls: type[_T]
    ) -> _T | None: ...


def _text(v: Any) -> Any:
    t = type(v)
    if t is str:
        return v
    if t is bytes:
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return _MISSING
    return _MISSING


def _make(json: bool) -> _Normalise:
    k: Callable[[str], Any] = (lambda s: s) if json else (lambda s: s.encode())
    K_CHANNEL, K_ID, K_PREV, K_FORMATS, K_META, K_SIZE, K_NOSEQ = map(
        k, ("channel", "id", "prev-id", "formats", "meta", "size", "no-seq")
    )
    K_ACTION, K_CONTENT, K_CONTENT_BIN, K_FILTERS, K_TYPE = map(
        k, ("action", "content", "content-bin", "content-filters", "type")
    )
    K_CODE, K_REASON, K_HEADERS, K_BODY, K_BODY_BIN = map(
        k, ("code", "reason", "headers", "body", "body-bin")
    )
    K_HR, K_HS, K_WS = map(k, ("http-response", "http-stream", "ws-message"))
    SEND = k("send")
    # options that send a format to the complete parser (Pushpin ignores http-stream's
    # content-bin, and body-bin, in tnetstring input: there they change nothing)
    hs_other = (K_FILTERS, K_CONTENT_BIN) if json else (K_FILTERS,)
    hr_other = (
        (K_CODE, K_REASON, K_HEADERS, K_FILTERS, K_BODY_BIN)
        if json
        else (K_CODE, K_REASON, K_HEADERS, K_FILTERS)
    )
    ws_other = (K_TYPE, K_FILTERS, K_CONTENT_BIN)
    missing = _MISSING
    text = _text

    def payload(f: dict[Any, Any], key: Any, other: tuple[Any, ...]) -> Any:
        fget = f.get
        action = fget(K_ACTION)
        if action is not None and action != SEND:
            return missing
        for o in other:
            if fget(o) is not None:
                return missing
        c: Any = fget(key)
        t = type(c)
        if t is str:
            return c.encode("utf-8")
        if t is bytes:
            return c
        return missing

    def normalise(value: dict[Any, Any], channel: str | None, item_cls: type[_T]) -> _T | None:
        get = value.get
        if not channel:
            channel = get(K_CHANNEL)
            if type(channel) is not str:
                channel = text(channel)
                if channel is missing:
                    return None
        if type(channel) is not str or not channel or len(channel) > 256 or "\x00" in channel:
            return None
        item_id = get(K_ID)
        if item_id is not None:
            if type(item_id) is not str:
                item_id = text(item_id)
                if item_id is missing:
                    return None
            if len(item_id) > MAX_FAST_ID_CHARS or _ID_BAD(item_id):
                return None
            item_id = item_id or None
        prev_id = get(K_PREV)
        if prev_id is not None:
            if type(prev_id) is not str:
                prev_id = text(prev_id)
                if prev_id is missing:
                    return None
            if len(prev_id) > MAX_FAST_ID_CHARS or _ID_BAD(prev_id):
                return None
            prev_id = prev_id or None
        vformats = get(K_FORMATS)
        legacy = vformats is None
        if legacy:
            vformats = value
        elif type(vformats) is not dict:
            return None
        fget = vformats.get
        formats: dict[str, dict[str, Any]] = {}
        f = fget(K_HR, missing)
        if f is not missing and not (legacy and f is None):
            if type(f) is not dict:
                return None
            body = payload(f, K_BODY, hr_other)
            if body is missing:
                return None
            formats["http-response"] = {
                "action": "send",
                "code": 200,
                "reason": "OK",
                "headers": [],
                "body": body,
                "body-patch": None,
            }
        f = fget(K_HS, missing)
        if f is not missing and not (legacy and f is None):
            if type(f) is not dict:
                return None
            content = payload(f, K_CONTENT, hs_other)
            if content is missing:
                return None
            formats["http-stream"] = {"action": "send", "content": content}
        f = fget(K_WS, missing)
        if f is not missing and not (legacy and f is None):
            if type(f) is not dict:
                return None
            content = payload(f, K_CONTENT, ws_other)
            if content is missing:
                return None
            formats["ws-message"] = {
                "action": "send",
                "type": "text",
                "content": content,
                "code": None,
                "reason": "",
            }
        if not formats:
            return None
        vmeta = get(K_META)
        if vmeta is None:
            meta: dict[str, str] = NO_META
        elif json and type(vmeta) is dict:
            for mk, mv in vmeta.items():
                if type(mk) is not str or type(mv) is not str:
                    return None
            meta = dict(vmeta)
        else:
            return None
        if get(K_SIZE) is not None:
            return None
        no_seq = get(K_NOSEQ)
        if no_seq is None:
            no_seq = False
        elif type(no_seq) is not bool:
            return None
        setters = _setters.get(item_cls)
        if setters is None:
            setters = _setters[item_cls] = tuple(getattr(item_cls, n).__set__ for n in _FIELDS)
        item = _new(item_cls)
        s_channel, s_formats, s_id, s_prev, s_meta, s_noseq = setters
        s_channel(item, channel)
        s_formats(item, formats)
        s_id(item, item_id)
        s_prev(item, prev_id)
        s_meta(item, meta)
        s_noseq(item, no_seq)
        return item

    return normalise


_json = _make(True)
_tnet = _make(False)


def normalise_item(
    value: dict[Any, Any], channel: str | None, json: bool, item_cls: type[_T]
) -> _T | None:
    """An ``item_cls`` for the usual item shape, or None (see the module docstring)."""
    return (_json if json else _tnet)(value, channel, item_cls)


def payload_bytes(formats: Any) -> int:
    """The payload bytes of a formats map: each format's ``content``, else its ``body``
    (``broker.items.item_bytes``, what ``MAX_ITEM_BYTES`` and ``history_max_bytes`` count)."""
    n = 0
    for fmt in formats.values():
        data = fmt.get("content")
        if data is None:
            data = fmt.get("body")
        if data is not None:
            n += len(data)
    return n


_DIGIT_RUNS: dict[int, Callable[[bytes], Any]] = {}
_NOT_YET: Any = object()


def digit_run(data: bytes | bytearray | memoryview, n: int) -> bool:
    """True when ``data`` (bytes-like) holds ``n`` or more ASCII digits in a row."""
    if n <= 0:
        return True
    search = _DIGIT_RUNS.get(n)
    if search is None:
        search = _DIGIT_RUNS[n] = re.compile(b"[0-9]{%d}" % n).search
    return search(bytes(data)) is not None


def first_hint(items: Any) -> int:
    """The index of the first of ``items`` (objects with a ``formats`` map) that has a format
    whose ``action`` is ``"hint"`` (``broker.ratelimit.has_hint``), or -1: the rate limiter's
    scan of a batch, which usually has none."""
    for i, item in enumerate(items):
        for f in item.formats.values():
            if isinstance(f, dict) and f.get("action") == "hint":
                return i
    return -1


def unpack_batch(data: bytes, item_cls: type[Any]) -> Any:
    """``msgpack.unpackb(data, raw=False)`` (a ``B`` frame's body), with each map of a top-level
    array that has the usual item shape already replaced by its ``item_cls`` (as
    ``normalise_item(value, None, True, item_cls)`` builds it); other elements stay as decoded.
    Raises what ``msgpack.unpackb`` raises."""
    values = _unpackb(data, raw=False)
    if type(values) is list:
        normalise = _json
        for i, value in enumerate(values):
            if type(value) is dict:
                item = normalise(value, None, item_cls)
                if item is not None:
                    values[i] = item
    return values


_JSON_SPACE = " \t\n\r"


def parse_j_frames(
    frames: list[Any],
    scan_once: Callable[[str, int], tuple[Any, int]],
    item_cls: type[_T],
    max_bytes: int,
    slow: Callable[[Any], tuple[list[Any], list[str]]],
    loads: Callable[[bytes], Any] | None = None,
    long_digits: int = 19,
) -> tuple[list[Any], list[str]]:
    """``slow(frame)`` for each of ``frames`` (a PULL read: ``broker.items.parse_pull_frame``,
    which returns ``(items, rejection reasons)``), the results joined in frame order; the usual
    frame is parsed here instead, with the same result: ``J`` and a JSON object in UTF-8 whose
    escapes hold no ``\\ud...`` (a surrogate, which the complete path checks), read by
    ``scan_once`` (``json.scanner``'s C scanner) from offset 1 of the decoded frame, nothing
    but JSON whitespace after it, whose ``normalise_item`` is an item of at most ``max_bytes``
    payload bytes.  With ``loads`` (``orjson.loads``: ``broker.items._json_loads`` says why it
    decodes such JSON as the scanner does), a frame without ``long_digits`` digits in a row
    is decoded by ``loads`` first; what it refuses (``ValueError``) is read by the scanner as
    without it.  Any other frame, or one that fails on the way, goes to ``slow``, which
    gives every error its message.  The compiled twin runs this loop without a Python frame
    per item (what was ~1 us of the broker's ~12 an item with ZeroMQ publishing)."""
    items: list[Any] = []
    errors: list[str] = []
    add = items.append
    normalise = _json
    for frame in frames:
        if (
            type(frame) is bytes
            and frame[:2] == b"J{"
            and 0 not in frame[2:5]
            and not (b"\\u" in frame and b"\\ud" in frame.lower())
        ):
            value = _NOT_YET
            if loads is not None and not digit_run(frame[1:], long_digits):
                try:
                    value = loads(frame[1:])
                except ValueError:  # refused: the scanner's way decides
                    value = _NOT_YET
            if value is _NOT_YET:
                try:
                    text = frame.decode("utf-8")
                    value, end = scan_once(text, 1)
                except (StopIteration, ValueError, RecursionError):
                    value = None
                else:
                    if end != len(text) and text[end:].strip(_JSON_SPACE):
                        value = None
            if type(value) is dict:
                item: Any = normalise(value, None, item_cls)
                if item is not None and payload_bytes(item.formats) <= max_bytes:
                    add(item)
                    continue
        parsed, bad = slow(frame)
        items += parsed
        errors += bad
    return items, errors
