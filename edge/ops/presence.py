"""What an edge tells the broker for presence (``broker.ops.presence``).

For channels in a namespace with ``presence = true`` (``broker.namespaces``, the same config
as the broker's), the edge counts its held sessions per ``(channel, user)``, ``user`` being the
session's ``user`` meta: ``Grip-Set-Meta: user=...`` on an HTTP hold, the WebSocket
``set-meta`` control message, or a WebSocket-over-HTTP ``Set-Meta-user`` header.  Sessions
without it are not counted.  Companion channels (``<channel>/presence``) are not tracked.

``PresenceCounter.take`` (sans-IO) scans those channels' sessions and returns the next
``wire.PresenceReport``: the pairs whose count changed since the last report (0: none left),
or every pair (``full``) on the first report, after a lost one, after a broker restart, and
every ``FULL_EVERY_S`` anyway.  Nothing runs per delivery or per connection: a scan a second
of the presence channels' sessions, which also notices meta set after the subscription.

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
from broker.wire import PresenceReport

if TYPE_CHECKING:
    from edge.server import Edge
    from edge.sessionstate import Session

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
FULL_EVERY_S = 30.0

Key = tuple[str, str]


class PresenceCounter:
    def __init__(self, source: str, namespaces: NamespaceTable) -> None:
        self.source = source
        self.namespaces = namespaces
        self._sent: dict[Key, int] = {}  # as last reported
        self._full = True
        self._broker_id: str | None = None
        self._last_full: float | None = None
        self.lost = 0

    def tracked(self, channel: str) -> bool:
        ns = self.namespaces.presence_of(channel)
        return ns is not None and not channel.endswith(ns.presence_suffix)

    def report_lost(self) -> None:
        """The last report was not sent: the next one lists everything."""
        self.lost += 1
        self._full = True

    def take(
        self,
        now: float,
        broker_id: str | None,
        channels: Iterable[str],
        sessions: Callable[[str], Iterable[Any]],
        user_of: Callable[[Any], str | None],
    ) -> PresenceReport:
        """The next report; ``channels``: the edge's live channels, ``sessions(channel)``:
        the sessions held on one, ``user_of(session)``: its user (None: not counted)."""
        counts: dict[Key, int] = {}
        for ch in channels:
            if not self.tracked(ch):
                continue
            for s in sessions(ch):
                user = user_of(s)
                if user:
                    key = (ch, user)
                    counts[key] = counts.get(key, 0) + 1
        if broker_id != self._broker_id:
            self._broker_id = broker_id
            self._full = True
        if self._last_full is None or now - self._last_full >= FULL_EVERY_S:
            self._full = True
        full, self._full = self._full, False
        if full:
            self._last_full = now
            users = [(ch, u, n) for (ch, u), n in counts.items()]
        else:
            users = [(ch, u, n) for (ch, u), n in counts.items() if self._sent.get((ch, u)) != n]
            users += [(ch, u, 0) for (ch, u) in self._sent if (ch, u) not in counts]
        self._sent = counts
        return PresenceReport(self.source, full, tuple(users))


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
        await trio.sleep(REPORT_INTERVAL_S)
        if not edge.linkwatch.up:
            counter.report_lost()  # the broker may have forgotten us: everything next time
            continue
        try:
            msg = counter.take(
                trio.current_time(),
                edge.link.broker_id,
                hub.live_channels(),
                hub.sessions,
                session_user,
            )
            if not edge.link.send_nowait(msg):
                counter.report_lost()
        except Exception:  # presence must never take the edge (and its clients) down
            log.exception("presence report failed")
            counter.report_lost()
