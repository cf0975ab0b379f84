"""The broker's presence table (sans-IO: reports and ``now`` in, events out).

Theory of operation.  For channels in a namespace with ``presence = true``
(``broker.namespaces``), each edge counts its held sessions per ``(channel, user)`` (the
``user`` meta the origin set) and reports the pairs whose count changed, about once a second,
in a ``wire.PresenceReport`` (``edge.ops.presence``); a ``full`` report lists every pair.  The
table keeps, per edge, what it last reported, and per pair the total over the edges that are
alive, so:

* a user on two edges, or on two connections, is present once, with the connection count;
* ``join`` is emitted when a pair's total goes from 0 to more;
* when the total drops to 0 the pair is *leaving* for ``leave_grace_s``: a long-poll client
  between two polls, or a client of a dead edge reconnecting to another one, comes back in that
  time without a leave and a join; past it ``leave`` is emitted;
* an edge that sent no report for ``silence_s`` is taken as gone (killed, cut off): its pairs
  are taken out of the totals (``expire``), so its users leave within ``silence_s +
  leave_grace_s`` plus one ``expire`` tick (``PRESENCE_BOUND_S`` with the defaults).  What it
  reported is kept for ``forget_s``: if it reports again (it was only slow), its pairs are put
  back before its report is applied, so its diffs stay right.

The table never blocks and does no I/O; ``broker.ops.presenceapi`` runs it (a tick task, the
companion-channel publishes and the HTTP answer).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.namespaces import NamespaceTable
from broker.wire import PresenceReport

EDGE_SILENCE_S = 3.0  # edges report every second: three missed reports and the edge is gone
LEAVE_GRACE_S = 1.5  # a user back within this long never left
EXPIRE_TICK_S = 0.5  # how often the broker calls ``expire``
FORGET_S = 60.0  # a silent edge's last report is kept this long (in case it was only slow)
PRESENCE_BOUND_S = EDGE_SILENCE_S + LEAVE_GRACE_S + EXPIRE_TICK_S  # a dead edge's users leave

Key = tuple[str, str]  # (channel, user)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A user joined or left a channel (``connections``: the total after a join, 0 on leave)."""

    kind: str  # "join" | "leave"
    channel: str
    user: str
    connections: int


@dataclass(frozen=True, slots=True)
class PresenceStatistics:
    edges: int  # edges reporting now
    silent_edges: int  # edges taken as gone whose last report is still kept
    channels: int  # channels with someone present
    users: int  # (channel, user) pairs present
    leaving: int  # pairs in their leave grace
    reports: int
    joins: int
    leaves: int
    ignored: int  # report entries for channels without presence


class _Edge:
    __slots__ = ("pairs", "last_seen", "alive")

    def __init__(self, now: float) -> None:
        self.pairs: dict[Key, int] = {}
        self.last_seen = now
        self.alive = True


class PresenceTable:
    def __init__(
        self,
        namespaces: NamespaceTable,
        *,
        silence_s: float = EDGE_SILENCE_S,
        leave_grace_s: float = LEAVE_GRACE_S,
        forget_s: float = FORGET_S,
    ) -> None:
        self.namespaces = namespaces
        self.silence_s = silence_s
        self.leave_grace_s = leave_grace_s
        self.forget_s = forget_s
        self._edges: dict[str, _Edge] = {}
        self._channels: dict[str, dict[str, int]] = {}  # channel -> user -> connections
        self._leaving: dict[Key, float] = {}  # pair -> when it leaves
        self._reports = self._joins = self._leaves = self._ignored = 0

    # -- queries ----------------------------------------------------------------------------------

    def tracked(self, channel: str) -> bool:
        """Whether ``channel`` has presence (its namespace's ``presence``, and it is not itself
        a companion channel)."""
        ns = self.namespaces.presence_of(channel)
        return ns is not None and not channel.endswith(ns.presence_suffix)

    def users(self, channel: str) -> list[tuple[str, int]]:
        """``[(user, connections), ...]`` present on ``channel``, sorted by user."""
        return sorted(self._channels.get(channel, {}).items())

    def companion(self, channel: str) -> str:
        """The channel ``channel``'s join and leave events are published to."""
        ns = self.namespaces.presence_of(channel)
        suffix = ns.presence_suffix if ns is not None else "/presence"
        return channel + suffix

    # -- inputs -----------------------------------------------------------------------------------

    def report(self, r: PresenceReport, now: float) -> list[PresenceEvent]:
        """Apply one edge's report; returns the joins (leaves wait for ``expire``)."""
        self._reports += 1
        events: list[PresenceEvent] = []
        edge = self._edges.get(r.edge)
        if edge is None:
            edge = self._edges[r.edge] = _Edge(now)
        # an edge taken as gone that reports again was only slow: its report applies to what
        # it reported before, and the result counts again (no join-then-leave for a pair its
        # report removes)
        revived = not edge.alive
        edge.alive = True
        edge.last_seen = now
        pairs = edge.pairs
        changes: dict[Key, int] = {}  # pair -> old count, for the pairs this report changes
        if r.full:
            reported = {(ch, user) for ch, user, n in r.users if n}
            for key in [k for k in pairs if k not in reported]:
                changes[key] = pairs.pop(key)
        for channel, user, n in r.users:
            key = (channel, user)
            if not self.tracked(channel):
                self._ignored += 1
                continue
            old = pairs.get(key, 0)
            if n == old:
                continue
            changes.setdefault(key, old)
            if n:
                pairs[key] = n
            else:
                del pairs[key]
        if revived:
            for key, n in pairs.items():
                self._add(key, n, now, events)
        else:
            for key, old in changes.items():
                self._add(key, pairs.get(key, 0) - old, now, events)
        return events

    def expire(self, now: float) -> list[PresenceEvent]:
        """Take silent edges out, forget long-silent ones, and emit the leaves that are due."""
        events: list[PresenceEvent] = []
        for name, edge in list(self._edges.items()):
            if edge.alive and now - edge.last_seen > self.silence_s:
                edge.alive = False
                for key, n in edge.pairs.items():
                    self._add(key, -n, now, events)
            if not edge.alive and now - edge.last_seen > self.forget_s:
                del self._edges[name]
        due = [key for key, t in self._leaving.items() if t <= now]
        for key in due:
            del self._leaving[key]
            self._leaves += 1
            events.append(PresenceEvent("leave", key[0], key[1], 0))
        return events

    def edge_gone(self, name: str, now: float) -> list[PresenceEvent]:
        """``name`` stopped for good (its users go into their leave grace now)."""
        edge = self._edges.pop(name, None)
        events: list[PresenceEvent] = []
        if edge is not None and edge.alive:
            for key, n in edge.pairs.items():
                self._add(key, -n, now, events)
        return events

    # -- internals --------------------------------------------------------------------------------

    def _add(self, key: Key, delta: int, now: float, events: list[PresenceEvent]) -> None:
        if not delta:
            return
        channel, user = key
        users = self._channels.get(channel)
        before = users.get(user, 0) if users is not None else 0
        after = max(before + delta, 0)
        if after:
            if users is None:
                users = self._channels[channel] = {}
            users[user] = after
            if not before:
                if self._leaving.pop(key, None) is None:  # not back within its grace
                    self._joins += 1
                    events.append(PresenceEvent("join", channel, user, after))
        elif before:
            assert users is not None
            del users[user]
            if not users:
                del self._channels[channel]
            self._leaving[key] = now + self.leave_grace_s

    def present(self) -> Iterable[tuple[str, str, int]]:
        """Every ``(channel, user, connections)`` present (for tests and debugging)."""
        for channel, users in self._channels.items():
            for user, n in users.items():
                yield channel, user, n

    def statistics(self) -> PresenceStatistics:
        alive = sum(1 for e in self._edges.values() if e.alive)
        return PresenceStatistics(
            edges=alive,
            silent_edges=len(self._edges) - alive,
            channels=len(self._channels),
            users=sum(len(u) for u in self._channels.values()),
            leaving=len(self._leaving),
            reports=self._reports,
            joins=self._joins,
            leaves=self._leaves,
            ignored=self._ignored,
        )
