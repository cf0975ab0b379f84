"""Parsed GRIP instructs and stream heads, reused across requests (sans-IO).

An origin answers every client of a channel with the same instruct headers, so each new held
connection used to decode the headers to ``str``, parse every ``Grip-*`` header, build a
``Hold`` (channels, keep-alive, cleaned response headers) and serialize the same response head
again: about a fifth of an edge's CPU per new connection (py-spy, bench/RESULTS.md).  Here the
parse is keyed by exactly what it depends on (status, reason, the raw header pairs, the body,
the route's prefix and the target's ``sub=`` channels) and the stream head by the ``Hold``
fields it is built from.

``Hold`` is frozen all the way down (tuples, and ``meta`` a read-only ``MappingProxyType``), so
held sessions share one ``Hold``: also less memory per held connection.  The caches are an
``InstructCache`` the edge creates (``Edge.instruct_cache``), not module state.
Errors (``InstructError``) are never cached.  Each cache holds at most ``MAX_ENTRIES`` and is
emptied when full (an origin that varies its headers per request, e.g. with cookies, just
misses); bodies over ``MAX_BODY`` bytes are not cached.

A channel per user or per document makes every answer differ in one place, its
``Grip-Channel`` value, and each new channel missed (a parse: ~15 us, against ~0.4 for a hit).
So a miss whose only ``Grip-Channel`` header names one plain channel (a token of
``_PLAIN_CHANNEL``'s characters: no parameters, no list) is also looked up as a *template*,
the same answer with ``TEMPLATE_CHANNEL`` in that value: the template's ``Hold`` is parsed
once, and each channel gets a copy with its own name first among the channels.  Nothing else
in a parse depends on a plain channel's name except the ``sub=`` channels it is deduplicated
against (such a name takes the full parse), and a JSON instruct's channels come from its body
(never templated).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, TypedDict

from edge.grip.instruct import Channel, Hold, parse_instruct, with_body
from edge.http1 import responses

MAX_ENTRIES = 512
MAX_BODY = 4096
# what a channel name in a template may hold (what no header parameter syntax uses)
_PLAIN_CHANNEL = re.compile(rb"[A-Za-z0-9_.:@/+=~!$*-]{1,512}")
TEMPLATE_CHANNEL = "gripcast-template-channel"
_TEMPLATE_VALUE = TEMPLATE_CHANNEL.encode()


class InstructOptions(TypedDict):
    """The route's keyword arguments to ``InstructCache.instruct``."""

    prefix: str
    extra_channels: tuple[str, ...]


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


# ``_parse``'s arguments, the key of its result: status, reason, the raw headers, body, prefix,
# the sub= channels, the stream body
_Key = tuple[Any, ...]


def _parse(
    status: int,
    reason: str,
    raw: tuple[tuple[bytes, bytes], ...],
    body: bytes,
    prefix: str,
    extra_channels: tuple[str, ...],
    stream_body: bytes | None,
) -> Hold:
    """``parse_instruct`` of bytes headers; ``stream_body`` set: the headers-only parse of a
    stream instruct with ``stream_body`` as the hold's initial body."""
    hold = parse_instruct(
        status, reason, decode_headers(raw), body, prefix=prefix, extra_channels=extra_channels
    )
    if stream_body is not None and (
        hold.mode == "stream" or (hold.mode is None and hold.next_link)
    ):
        hold = with_body(hold, stream_body)
    return hold


class InstructCache:
    """Parsed instructs and stream heads of one edge (see the module docstring)."""

    __slots__ = ("_holds", "_heads")

    def __init__(self) -> None:
        self._holds: dict[tuple[object, ...], Hold] = {}
        self._heads: dict[tuple[object, ...], bytes] = {}

    def instruct(
        self,
        status: int,
        reason: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        *,
        prefix: str,
        extra_channels: tuple[str, ...],
        stream_body: bytes | None = None,
    ) -> Hold:
        """``parse_instruct`` of a response with bytes headers, memoized.

        ``stream_body`` set: the headers-only parse of a stream instruct (``body`` b""), with
        ``stream_body`` as the hold's initial body (``_parse``'s complete-stream case)."""
        size = len(body) + (len(stream_body) if stream_body is not None else 0)
        key: _Key = (status, reason, tuple(raw_headers), body, prefix, extra_channels, stream_body)
        holds = self._holds
        cached = size <= MAX_BODY
        hold = holds.get(key) if cached else None
        if hold is not None:
            return hold
        hold = self._from_template(key) if cached else None
        if hold is None:
            hold = _parse(*key)
        if cached:
            if len(holds) >= MAX_ENTRIES:
                holds.clear()
            holds[key] = hold
        return hold

    def _from_template(self, key: _Key) -> Hold | None:
        """The hold of a template (module docstring), or None when ``key``'s answer is not one
        (``key``: ``_parse``'s arguments)."""
        status, reason, raw, body, prefix, extra_channels, stream_body = key
        at = -1
        for i, (k, v) in enumerate(raw):
            lk = k.lower()
            if lk == b"grip-channel":
                if at >= 0:
                    return None  # several: not a template
                at = i
            elif lk == b"content-type" and b"grip-instruct" in v.lower():
                return None  # a JSON instruct: channels in the body too
        if at < 0:
            return None
        value = raw[at][1]
        if _PLAIN_CHANNEL.fullmatch(value) is None or value == _TEMPLATE_VALUE:
            return None
        name = prefix + value.decode("latin-1")
        if extra_channels and name in {prefix + c for c in extra_channels}:
            return None  # deduplicated against a sub= channel: the full parse knows how
        headers = raw[:at] + ((raw[at][0], _TEMPLATE_VALUE),) + raw[at + 1 :]
        shape = (status, reason, headers) + key[3:]  # the placeholder's answer
        tkey = shape + (TEMPLATE_CHANNEL,)
        holds = self._holds
        template = holds.get(tkey)
        if template is None:
            template = _parse(*shape)
            first = template.channels[0] if template.channels else None
            if first is None or first != Channel(prefix + TEMPLATE_CHANNEL):
                return None  # (not the expected shape: never templated)
            if len(holds) >= MAX_ENTRIES:
                holds.clear()
            holds[tkey] = template
        return replace(template, channels=(Channel(name),) + template.channels[1:])

    def stream_head(self, hold: Hold, *, chunked: bool) -> bytes:
        """``responses.stream_head``, memoized on the fields it is built from."""
        key = (hold.code, hold.reason, hold.headers, chunked)
        heads = self._heads
        data = heads.get(key)
        if data is None:
            data = responses.stream_head(hold, chunked=chunked)
            if len(heads) >= MAX_ENTRIES:
                heads.clear()
            heads[key] = data
        return data

    def clear(self) -> None:
        self._holds.clear()
        self._heads.clear()
