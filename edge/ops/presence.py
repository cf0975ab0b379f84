"""What an edge tells the broker for presence (``broker.ops.presence``).

For channels in a namespace with ``presence = true`` (``broker.namespaces``, the same config
as the broker's), the edge counts its held sessions per ``(channel, user)``, ``user`` being the
session's ``user`` meta: ``Grip-Set-Meta: user=...`` on an HTTP hold, the WebSocket
``set-meta`` control message, or a WebSocket-over-HTTP ``Set-Meta-user`` header.  Sessions
without it are not counted.  Companion channels (``<channel>/presence``) are not tracked.

``PresenceCounter.take`` (sans-IO) scans those channels' sessions and returns the next
``wire.PresenceReport``: the pairs whose count changed since the last report (0: none left),
or every pair (``full``) on the first report, after a lost one, after a broker restart, and
every ``FULL_EVERY_S`` anyway; each live broker gets them (docs/cluster.md).  Nothing runs per
delivery or per connection: a scan a second of the presence channels' sessions, which also
notices meta set after the subscription.

``serve_presence`` (the I/O) sends one report every ``REPORT_INTERVAL_S`` while the broker
link is up, even an empty one: the broker takes an edge silent for
``broker.ops.presence.EDGE_SILENCE_S`` as gone.  It does nothing when no namespace has
presence on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from broker.namespaces import NamespaceTable
from broker.runtime.ticks import sleep_tick
from broker.wire import PresenceReport

if TYPE_CHECKING:
    from edge.server import Edge
    from edge.sessionstate import Session

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
FULL_EVERY_S = 30.0

Key = tuple[str, str]


class PresenceCounter:
    """The reports of one edge, for every broker it reports to.

    Each ``take`` is one numbered scan (``seq``, one series for all brokers, so every broker
    sees the same numbers).  A broker gets the pairs changed since the last scan, or every pair
    (``full``) when it did not get the last report, restarted (another broker id), and every
    ``FULL_EVERY_S``; each listed pair with its ``since``: the seq of the first report that
    listed it on this edge (0: gone).  The brokers derive the presence events' ids from these
    numbers (``broker.ops.presence``)."""

    def __init__(self, source: str, namespaces: NamespaceTable) -> None:
        self.source = source
        self.namespaces = namespaces
        self.seq = 0
        self._sent: dict[Key, int] = {}  # counts of the last scan
        self._since: dict[Key, int] = {}  # pair -> seq of the first report that listed it
        self._synced: dict[int, str | None] = {}  # broker index -> its id, when it got the last
        self._last_full: float | None = None
        self.lost = 0

    def tracked(self, channel: str) -> bool:
        ns = self.namespaces.presence_of(channel)
        return ns is not None and not channel.endswith(ns.presence_suffix)

    def report_lost(self, index: int | None = None) -> None:
        """The last report did not reach broker ``index`` (None: any broker): the next one it
        gets lists everything."""
        self.lost += 1
        if index is None:
            self._synced.clear()
        else:
            self._synced.pop(index, None)

    def take(
        self,
        now: float,
        brokers: Mapping[int, str | None],
        channels: Iterable[str],
        sessions: Callable[[str], Iterable[Any]],
        user_of: Callable[[Any], str | None],
    ) -> dict[int, PresenceReport]:
        """The next report for each broker of ``brokers`` (index -> broker id: the ones to
        send to now); ``channels``: the edge's live channels, ``sessions(channel)``: the
        sessions held on one, ``user_of(session)``: its user (None: not counted)."""
        if not brokers:  # no scan, no number: a number no broker got would look announced
            self._synced.clear()
            return {}
        counts: dict[Key, int] = {}
        for ch in channels:
            if not self.tracked(ch):
                continue
            for s in sessions(ch):
                user = user_of(s)
                if user:
                    key = (ch, user)
                    counts[key] = counts.get(key, 0) + 1
        self.seq += 1
        seq = self.seq
        since = self._since
        for key in [k for k in since if k not in counts]:
            del since[key]
        for key in counts:
            since.setdefault(key, seq)
        every = self._last_full is None or now - self._last_full >= FULL_EVERY_S
        if every:
            self._last_full = now
        full_r = diff_r = None
        out: dict[int, PresenceReport] = {}
        for index, broker_id in brokers.items():
            if every or index not in self._synced or self._synced[index] != broker_id:
                if full_r is None:
                    pairs = list(counts.items())
                    full_r = PresenceReport(
                        self.source,
                        True,
                        tuple((ch, u, n) for (ch, u), n in pairs),
                        seq,
                        tuple(since[k] for k, _ in pairs),
                    )
                out[index] = full_r
            else:
                if diff_r is None:
                    sent = self._sent
                    users = [(ch, u, n) for (ch, u), n in counts.items() if sent.get((ch, u)) != n]
                    users += [(ch, u, 0) for (ch, u) in sent if (ch, u) not in counts]
                    diff_r = PresenceReport(
                        self.source,
                        False,
                        tuple(users),
                        seq,
                        tuple(since.get((ch, u), 0) for ch, u, _ in users),
                    )
                out[index] = diff_r
        self._synced = dict(brokers)
        self._sent = counts
        return out


def _user(meta: Mapping[str, str]) -> str | None:
    """``meta``'s ``user`` (meta names compare case-insensitively: ``Set-Meta-User``)."""
    user = meta.get("user")
    if user is None:
        for name, value in meta.items():
            if name.lower() == "user":
                return value
    return user


def session_user(s: Session) -> str | None:
    """The ``user`` meta of a held session (None: none, or the session is over)."""
    if s.done:
        return None
    user = _user(s.meta)
    if user is None:
        from edge.ws.over_http import WohOrigin
        from edge.ws.session import WsSession

        if isinstance(s, WsSession) and isinstance(s.side, WohOrigin):
            user = _user(s.side.meta)  # Set-Meta-User from the WebSocket-over-HTTP origin
    return user or None


async def serve_presence(edge: Edge) -> None:
    table = NamespaceTable(edge.cfg.namespaces)
    if not table.has_presence:
        return
    counter = PresenceCounter(edge.stats.source, table)
    hub = edge.hub
    while True:
        await sleep_tick(REPORT_INTERVAL_S)  # with the edge's other timers (broker.runtime.ticks)
        if not edge.linkwatch.up:
            counter.report_lost()  # the brokers may have forgotten us: everything next time
            continue
        try:
            # every live broker gets the reports (each keeps the whole table; the events'
            # ids make the brokers' publishes of one event one item: broker.ops.presence)
            links = {link.index: link for link in edge.link.up()}
            reports = counter.take(
                trio.current_time(),
                {i: link.broker_id for i, link in links.items()},
                hub.live_channels(),
                hub.sessions,
                session_user,
            )
            for index, msg in reports.items():
                if not links[index].send_nowait(msg):
                    counter.report_lost(index)
        except Exception:  # presence must never take the edge (and its clients) down
            log.exception("presence report failed")
            counter.report_lost()
