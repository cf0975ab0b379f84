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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from edge.grip.instruct import Hold, parse_instruct, with_body
from edge.http1 import responses

MAX_ENTRIES = 512
MAX_BODY = 4096


class InstructOptions(TypedDict):
    """The route's keyword arguments to ``InstructCache.instruct``."""

    prefix: str
    extra_channels: tuple[str, ...]


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


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
        key = (status, reason, tuple(raw_headers), body, prefix, extra_channels, stream_body)
        holds = self._holds
        hold = holds.get(key) if size <= MAX_BODY else None
        if hold is not None:
            return hold
        hold = parse_instruct(
            status,
            reason,
            decode_headers(raw_headers),
            body,
            prefix=prefix,
            extra_channels=extra_channels,
        )
        if stream_body is not None and (
            hold.mode == "stream" or (hold.mode is None and hold.next_link)
        ):
            hold = with_body(hold, stream_body)
        if size <= MAX_BODY:
            if len(holds) >= MAX_ENTRIES:
                holds.clear()
            holds[key] = hold
        return hold

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
