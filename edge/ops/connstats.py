"""What an edge tells the broker for Pushpin's stats socket (sans-IO: time passed in).

The broker builds the stats packets (``broker.ops.stats``) but does not see client connections, so
each edge keeps this small ledger and ``take()`` turns it, about once a second (sooner when
``batch_events`` events are waiting), into one fire-and-forget ``wire.StatsReport``
control message (the contract is in ``broker.wire``):

* connection events: ``opened`` at accept (type ``http``, id ``<edge>:<n>`` like condure's
  ``condure:0-0-8``), ``websocket`` when the connection becomes a WebSocket (type ``ws``, the
  WebSocket-over-HTTP ``Connection-Id`` uuid as id, as Pushpin does), ``closed``; a connection
  that opened and closed between two reports is reported as both;
* refreshes: every reported connection again every ``ttl * 3/4`` (Pushpin's
  ``SHOULD_PROCESS_TIME``), spread over one bucket per report;
* counts: open connections now and the most since the last report, connection-seconds, and
  messages sent to clients since the last report (the caller reads the delivery path's
  counter; nothing here runs per delivery);
* activity (Pushpin's ``activity`` and ``counts`` packets): ``request(route_id)`` for each
  request received once its route is found (HTTP or WebSocket), ``activity(route_id)`` for
  other activity Pushpin counts; the first one after a report calls ``on_activity`` so the
  sender reports within ``ACTIVITY_DELAY_S``, as Pushpin batches activity for 100 ms;
* subscriber counts per ``(mode, channel)`` for the channels whose sessions changed (the hub's
  ``changed`` set), ``0`` when none are left; everything (``full``) on the first report, after a
  report was lost, after a broker restart, or after a silence the broker may have expired.

The broker announces in its heartbeat whether its stats socket is on and the connection ttl
(``enable(ttl_s)``); while it is off connections are only counted, no events are kept.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Hashable, Iterable

from broker.wire import StatsReport

MODES = ("response", "stream", "ws")
BATCH_EVENTS = 1000  # events that trigger a report before the next second
MAX_PENDING = 50_000  # events kept while reports cannot go out; beyond, dropped (ttl covers them)
FLUSH_INTERVAL_S = 1.0
ACTIVITY_DELAY_S = 0.1  # Pushpin's ACTIVITY_TIMEOUT (statsmanager.cpp): activity batched 100 ms
FULL_AFTER_S = 5.0  # a silence this long: send everything (the broker forgets an edge at 10 s)


class _Conn:
    __slots__ = ("id", "type", "peer", "bucket", "closed")

    def __init__(self, cid: str, peer: str) -> None:
        self.id = cid
        self.type = "http"
        self.peer = peer
        self.bucket = -1  # refresh bucket once reported; -1: not reported yet
        self.closed = False


class ConnStats:
    def __init__(
        self, source: str, *, batch_events: int = BATCH_EVENTS, max_pending: int = MAX_PENDING
    ) -> None:
        self.source = source
        self.batch_events = batch_events
        self.max_pending = max_pending
        self.ttl_s = 0  # 0: the broker's stats socket is off
        self.on_full: Callable[[], None] | None = (
            None  # called once pending events reach batch_events (wakes the sender)
        )
        self._conns: dict[object, _Conn] = {}
        self._new: dict[str, _Conn] = {}  # not reported yet
        self._gone: list[str] = []
        self._buckets: list[dict[str, _Conn]] = [{}]
        self._bucket = 0  # next bucket refreshed
        self._fill = 0  # next bucket filled
        self._ids = itertools.count(1)
        self._open = 0
        self._max = 0
        self._area = 0.0  # connection-seconds since the last report
        self._changed_at: float | None = None
        self._subs: dict[tuple[str, str], int] = {}  # as last reported
        self._full = True
        self._broker_id: str | None = None
        self._last_take: float | None = None
        self._sent_base: int | None = None
        self._refreshed_at: float | None = None
        self._activity: dict[str, int] = {}  # route id ("": none) -> count since the last report
        self._requests = 0
        self.on_activity: Callable[[], None] | None = (
            None  # called at the first activity after a report (wakes the sender)
        )
        self.dropped = 0  # events dropped (pending beyond max_pending)
        self.lost = 0  # reports that could not be sent

    # -- connection events (per connection, never per delivery) --------------------------------

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def _count(self, now: float, delta: int) -> None:
        if self._changed_at is not None:
            self._area += self._open * max(now - self._changed_at, 0.0)
        self._changed_at = now
        self._open += delta
        if self._open > self._max:
            self._max = self._open

    def _pending(self) -> int:
        return len(self._new) + len(self._gone)

    def _queued(self) -> None:
        if self.on_full is not None and self._pending() == self.batch_events:
            self.on_full()

    def opened(self, key: Hashable, peer: str, now: float) -> str:
        """A client connection was accepted (``key``: anything hashable, e.g. its socket)."""
        c = _Conn(f"{self.source}:{next(self._ids)}", peer)
        self._conns[key] = c
        self._count(now, +1)
        if self.ttl_s > 0:  # (per accepted connection: ``enabled`` and ``_queued`` inline)
            new = self._new
            pending = len(new) + len(self._gone)
            if pending < self.max_pending:
                new[c.id] = c
                if pending + 1 == self.batch_events and self.on_full is not None:
                    self.on_full()
            else:
                self.dropped += 1
        return c.id

    def websocket(self, key: Hashable, ws_id: str | None) -> None:
        """The connection became a WebSocket (``ws_id``: its WebSocket-over-HTTP connection id;
        None: a new uuid, as Pushpin gives every WebSocket)."""
        c = self._conns.get(key)
        if c is None:
            return
        new_id = ws_id or str(uuid.uuid4())
        if c.id in self._new:
            del self._new[c.id]
            c.id, c.type = new_id, "ws"
            self._new[c.id] = c
            return
        if c.bucket >= 0:  # reported as http: that one is gone, the ws one is new
            self._buckets[c.bucket].pop(c.id, None)
            c.bucket = -1
            self._gone.append(c.id)
            c.id, c.type = new_id, "ws"
            self._new[c.id] = c
            self._queued()
            return
        c.id, c.type = new_id, "ws"

    def open_ids(self, ids: Iterable[str]) -> tuple[str, ...]:
        """Which of ``ids`` are open connections here (the ``conncheck`` command; rare, so a
        scan rather than an index kept on the accept path)."""
        wanted = set(ids)
        return tuple(c.id for c in self._conns.values() if c.id in wanted)

    def closed(self, key: Hashable, now: float) -> None:
        c = self._conns.pop(key, None)
        if c is None:
            return
        self._count(now, -1)
        if c.id in self._new:
            if self._pending() < self.max_pending:
                c.closed = True  # reported as opened, then gone
            else:
                del self._new[c.id]
                self.dropped += 1
        elif c.bucket >= 0:
            self._buckets[c.bucket].pop(c.id, None)
            if self._pending() < self.max_pending:
                self._gone.append(c.id)
                self._queued()
            else:
                self.dropped += 1

    # -- activity (per request, never per delivery) ---------------------------------------------

    def activity(self, route_id: str | None, n: int = 1) -> None:
        """Activity on a route (``route_id``: the route's explicit id, None or "" without)."""
        if not self.enabled:
            return
        key = route_id or ""
        first = not self._activity and not self._requests
        self._activity[key] = self._activity.get(key, 0) + n
        if first and self.on_activity is not None:
            self.on_activity()

    def request(self, route_id: str | None) -> None:
        """A client request was received and routed: activity 1 and one request."""
        if self.ttl_s <= 0:
            return
        key = route_id or ""  # (``activity(route_id)`` inline: once per request)
        activity = self._activity
        first = not activity and not self._requests
        activity[key] = activity.get(key, 0) + 1
        if first and self.on_activity is not None:
            self.on_activity()
        self._requests += 1

    @property
    def activity_pending(self) -> bool:
        return bool(self._activity or self._requests)

    # -- reporting -----------------------------------------------------------------------------

    def enable(self, ttl_s: int) -> None:
        """The broker's stats socket is on with this connection ttl (0: off)."""
        ttl_s = max(int(ttl_s), 0)
        if ttl_s == self.ttl_s:
            return
        was = self.ttl_s
        self.ttl_s = ttl_s
        reported = [c for b in self._buckets for c in b.values()]
        n = max(int(ttl_s * 3 / 4 / FLUSH_INTERVAL_S), 1) if ttl_s else 1
        self._buckets = [{} for _ in range(n)]
        self._bucket = self._fill = 0
        if not ttl_s:  # off: forget every event; connections are only counted
            for c in self._conns.values():
                c.bucket = -1
            self._new.clear()
            self._gone.clear()
            self._subs.clear()
            self._activity.clear()
            self._requests = 0
            self._full = True
            return
        if not was:  # on: every open connection is new to the broker
            self._new = {c.id: c for c in self._conns.values()}
            self._full = True
            self._sent_base = None
            return
        for c in reported:
            self._place(c)

    def _place(self, c: _Conn) -> None:
        c.bucket = self._fill
        self._buckets[self._fill][c.id] = c
        self._fill = (self._fill + 1) % len(self._buckets)

    def needs_full(self, now: float, broker_id: str | None) -> bool:
        """Whether the next report must list every subscription (call before ``take``)."""
        if broker_id != self._broker_id:
            self._broker_id = broker_id
            self._full = True
        if self._last_take is not None and now - self._last_take > FULL_AFTER_S:
            self._full = True
        return self._full

    def report_lost(self) -> None:
        """The last report could not be sent: resend every subscription next time."""
        self.lost += 1
        self._full = True

    def take(
        self,
        now: float,
        sent_total: int,
        channels: Iterable[str],
        count_modes: Callable[[str], dict[str, int]],
    ) -> StatsReport | None:
        """The next ``stats`` message, or None while the broker's stats socket is off.

        ``sent_total``: messages delivered to clients so far (a counter); ``channels``: the
        channels whose subscriptions changed (every live one when ``needs_full``);
        ``count_modes(channel)``: ``{mode: sessions}`` of that channel on this edge.
        """
        self._count(now, 0)
        area, self._area = self._area, 0.0
        peak, self._max = self._max, self._open
        if self._sent_base is None:
            self._sent_base = sent_total
        sent, self._sent_base = max(sent_total - self._sent_base, 0), sent_total
        if not self.enabled:
            return None
        self._last_take = now
        full, self._full = self._full, False
        subs: list[list[str | int]] = []  # [mode, channel, count]
        if full:
            self._subs = {}
        for ch in channels:
            modes = count_modes(ch)
            for mode in MODES:
                n = modes.get(mode, 0)
                key = (mode, ch)
                old = self._subs.get(key, 0)
                if n != old:
                    subs.append([mode, ch, n])
                    if n:
                        self._subs[key] = n
                    else:
                        del self._subs[key]
        conns = []
        gone = []
        for c in self._new.values():
            conns.append([c.id, c.type, c.peer])
            if c.closed:
                gone.append(c.id)
        # one refresh bucket per FLUSH_INTERVAL_S, however often reports go out (activity
        # makes them more frequent)
        if self._refreshed_at is None or now - self._refreshed_at >= FLUSH_INTERVAL_S * 0.9:
            self._refreshed_at = now
            refresh = self._buckets[self._bucket]
            self._bucket = (self._bucket + 1) % len(self._buckets)
            conns.extend([c.id, c.type, c.peer] for c in refresh.values())
        for c in self._new.values():
            if not c.closed:
                self._place(c)
        self._new = {}
        gone.extend(self._gone)
        self._gone = []
        activity, self._activity = tuple(self._activity.items()), {}
        requests, self._requests = self._requests, 0
        return StatsReport(
            self.source,
            full,
            tuple(tuple(c) for c in conns),
            tuple(gone),
            tuple(tuple(x) for x in subs),
            self._open,
            peak,
            round(area, 3),
            sent,
            activity,
            requests,
        )
