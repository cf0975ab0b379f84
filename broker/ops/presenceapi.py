"""Presence, the I/O side: runs ``broker.ops.presence.PresenceTable`` in the broker.

* ``on_report`` takes an edge's ``wire.PresenceReport`` (from the control socket, never
  blocking: the joins are queued);
* ``serve`` (one task) calls ``expire`` every ``EXPIRE_TICK_S`` and publishes the queued join
  and leave events to each channel's companion channel (``<channel>/presence``, the namespace's
  ``presence_suffix``) through the ordinary publish path, so they are sequenced, kept in
  history and delivered like any message: one JSON object per event in the ``http-stream``
  (a line), ``http-response`` and ``ws-message`` formats::

      {"type": "join"|"leave", "channel": "...", "user": "...", "connections": n}

* ``answer`` is the publish API's ``GET /channels/<channel>/presence`` (the one hook in
  ``broker.ingest.httpapi``, after the same JWT check as publishing).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qs, unquote

import trio

from broker.errors import PublishError, RateLimited, StoreUnavailable
from broker.items import Item, parse_item, validate_channel
from broker.namespaces import NamespaceTable
from broker.ops.presence import (
    EXPIRE_TICK_S,
    LIMIT_DEFAULT,
    LIMIT_MAX,
    PresenceEvent,
    PresenceQuery,
    PresenceTable,
)
from broker.wire import PresenceReport

log = logging.getLogger(__name__)

PREFIX = "/channels/"
SUFFIX = "/presence"
_JSON = "application/json"

Answer = tuple[int, str, str, tuple[tuple[str, str], ...]]  # status, body, type, extra headers


def event_item(channel: str, ev: PresenceEvent) -> Item:
    """The published item of one event, on ``channel`` (the companion channel), with the
    event's id as its item id (several brokers publishing it: one item)."""
    text = json.dumps(
        {"type": ev.kind, "channel": ev.channel, "user": ev.user, "connections": ev.connections},
        separators=(",", ":"),
    )
    raw: dict[str, object] = {"channel": channel}
    if ev.id:
        raw["id"] = ev.id
    return parse_item(
        {
            **raw,
            "formats": {
                "http-stream": {"content": text + "\n"},
                "http-response": {"body": text + "\n"},
                "ws-message": {"content": text},
            },
        },
        json=True,
    )


class PresenceService:
    def __init__(
        self,
        namespaces: NamespaceTable,
        publish: Callable[[Sequence[Item]], Awaitable[object]],
    ) -> None:
        self.table = PresenceTable(namespaces)
        self.enabled = namespaces.has_presence
        self._publish = publish
        self._pending: list[PresenceEvent] = []
        self._wake = trio.Event()
        self.publish_failures = 0

    def on_report(self, report: PresenceReport) -> None:
        if not self.enabled:
            return
        events = self.table.report(report, trio.current_time())
        if events:
            self._pending += events
            self._wake.set()

    async def serve(self) -> None:
        """Expire silent edges and publish the events, until cancelled."""
        if not self.enabled:
            return
        while True:
            with trio.move_on_after(EXPIRE_TICK_S):
                await self._wake.wait()
            self._wake = trio.Event()
            events, self._pending = self._pending, []
            events += self.table.expire(trio.current_time())
            if not events:
                continue
            items = []
            for ev in events:
                log.info("presence %s channel=%s user=%s", ev.kind, ev.channel, ev.user)
                try:
                    items.append(event_item(self.table.companion(ev.channel), ev))
                except PublishError as exc:  # e.g. a companion name over the channel limit
                    self.publish_failures += 1
                    log.warning("presence event not published channel=%s: %s", ev.channel, exc)
            if not items:
                continue
            try:
                await self._publish(items)
            except (StoreUnavailable, RateLimited) as exc:
                self.publish_failures += len(items)
                log.warning("presence events not published events=%d: %s", len(items), exc)

    def answer(self, method: str, target: str) -> Answer | None:
        """``GET /channels/<channel>/presence``; None for any other path."""
        path = target.split("?", 1)[0]
        if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return None
        raw = path[len(PREFIX) : -len(SUFFIX)]
        if not raw:
            return None
        if method != "GET":
            return 405, f"Method not allowed: {method}.\n", "text/plain", (("Allow", "GET"),)
        channel = unquote(raw)
        try:
            validate_channel(channel, "request")
        except PublishError as exc:
            return _error(400, f"Invalid channel: {exc.reason}.")
        if not self.table.tracked(channel):
            return _error(
                404,
                f"Presence is off for channel {channel!r} (no namespace with presence = true).",
            )
        try:
            limit = _limit(target)
        except ValueError as exc:
            return _error(400, str(exc))
        body = self.table.answer(PresenceQuery(channel, limit))
        assert body is not None  # tracked
        return 200, json.dumps(body) + "\n", _JSON, ()

    def command(self, q: PresenceQuery) -> dict[str, object] | None:
        """The command socket's ``presence`` (``broker.ingest.commands``): the HTTP answer's
        map; None when presence is off for the channel."""
        return self.table.answer(q)


def _limit(target: str) -> int:
    """The ``limit`` query parameter (users listed, default ``LIMIT_DEFAULT``, at most
    ``LIMIT_MAX``); ValueError with the reason when it is not a positive integer."""
    query = parse_qs(target.partition("?")[2], keep_blank_values=True)
    values = query.pop("limit", [])
    if query:
        raise ValueError(f"Unknown query parameter {sorted(query)[0]!r}.")
    if not values:
        return LIMIT_DEFAULT
    if len(values) > 1 or not values[0].isdigit() or int(values[0]) < 1:
        raise ValueError("Invalid limit: a positive integer.")
    return min(int(values[0]), LIMIT_MAX)


def _error(status: int, reason: str) -> Answer:
    """Errors are one line of text, as the rest of the publish API's (and Pushpin's)."""
    return status, reason + "\n", "text/plain", ()
