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

Several brokers (docs/cluster.md): every edge reports to every live broker, so each broker
keeps the whole table and answers the presence queries, and each broker publishes the events
it sees.  An event is one item however many brokers publish it: its item id is derived from
what every broker sees alike (``event_id``): a join from the channel, the user, the edge whose
report made the pair present and that edge's report number (``seq``) that first listed the
pair (its ``since``); a leave from the edge and the report number that made the pair absent
(or that edge's silence after that report).  The Redis store's id de-duplication
(``id_cache_ttl_s``) keeps the first and drops the others.  A broker that learns an edge (it
started, or restarted, after the edge) takes the pairs its reports list from before, until its
first full one, as already announced (``quiet``: no join), so a broker restart publishes no
join again, even past ``id_cache_ttl_s``.

The table never blocks and does no I/O; ``broker.ops.presenceapi`` runs it (a tick task, the
companion-channel publishes and the HTTP answer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.namespaces import NamespaceTable
from broker.wire import PresenceReport

EDGE_SILENCE_S = 3.0  # edges report every second: three missed reports and the edge is gone
LEAVE_GRACE_S = 1.5  # a user back within this long never left
EXPIRE_TICK_S = 0.5  # how often the broker calls ``expire``
FORGET_S = 60.0  # a silent edge's last report is kept this long (in case it was only slow)
PRESENCE_BOUND_S = EDGE_SILENCE_S + LEAVE_GRACE_S + EXPIRE_TICK_S  # a dead edge's users leave
LIMIT_DEFAULT = 1000  # users listed by a presence query ("truncated" beyond)
LIMIT_MAX = 10_000
SEEN_EDGES_MAX = 10_000  # edge names remembered (to tell a new edge from a forgotten one)

Key = tuple[str, str]  # (channel, user)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A user joined or left a channel (``connections``: the total after a join, 0 on leave)."""

    kind: str  # "join" | "leave"
    channel: str
    user: str
    connections: int
    id: str = ""  # the item id it is published with (``event_id``)


def event_id(kind: str, channel: str, user: str, origin: str) -> str:
    """The item id of a presence event: the same on every broker for the same event
    (``origin``: for a join, the edge and its report number; for a leave, the join's id)."""
    text = "\0".join((kind, channel, user, origin)).encode("utf-8", "surrogatepass")
    return f"presence-{kind}-{hashlib.blake2b(text, digest_size=12).hexdigest()}"


def _origin(edge: str, seq: int, what: object) -> str:
    """What an event's id derives from; "" (no id) for an edge that does not number its
    reports (an older one: its events would all look alike)."""
    return f"{edge}\0{what}" if seq else ""


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    """Who is on ``channel`` (``GET /channels/<ch>/presence``, the ``presence`` command)."""

    channel: str
    limit: int = LIMIT_DEFAULT


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
    quiet_joins: int = 0  # pairs of an edge new to this broker, present from before (no event)


class _Edge:
    __slots__ = ("pairs", "last_seen", "alive", "seq")

    def __init__(self, now: float) -> None:
        self.pairs: dict[Key, int] = {}
        self.last_seen = now
        self.alive = True
        self.seq = 0  # of its last report


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
        # pair -> (when it leaves, what made it absent: the origin of its leave's id)
        self._leaving: dict[Key, tuple[float, str]] = {}
        self._seen: set[str] = set()  # edge names ever reported (bounded: SEEN_EDGES_MAX)
        self._reports = self._joins = self._leaves = self._ignored = self._quiet = 0

    # -- queries ----------------------------------------------------------------------------------

    def tracked(self, channel: str) -> bool:
        """Whether ``channel`` has presence (its namespace's ``presence``, and it is not itself
        a companion channel)."""
        ns = self.namespaces.presence_of(channel)
        return ns is not None and not channel.endswith(ns.presence_suffix)

    def users(self, channel: str) -> list[tuple[str, int]]:
        """``[(user, connections), ...]`` present on ``channel``, sorted by user."""
        return sorted(self._channels.get(channel, {}).items())

    def answer(self, q: PresenceQuery) -> dict[str, Any] | None:
        """The answer to ``q`` (the HTTP and command socket map); None: presence is off for
        the channel."""
        if not self.tracked(q.channel):
            return None
        users = self.users(q.channel)
        return {
            "channel": q.channel,
            "count": len(users),
            "users": [{"user": u, "connections": n} for u, n in users[: q.limit]],
            "truncated": len(users) > q.limit,
        }

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
        # an edge that has not yet sent this broker a full report (this broker started, or
        # restarted, after it): what it lists from before this report was announced (by
        # another broker, or by this one before its restart)
        first = r.edge not in self._seen and r.seq > 1
        # one forgotten (silent past ``forget_s``) whose users left: their joins are new ones
        returning = edge is None and r.edge in self._seen
        if edge is None:
            edge = self._edges[r.edge] = _Edge(now)
        if r.full and r.edge not in self._seen:
            if len(self._seen) >= SEEN_EDGES_MAX:
                self._seen.clear()
            self._seen.add(r.edge)
        since: Mapping[Key, int] = (
            {(ch, u): s for (ch, u, _), s in zip(r.users, r.since, strict=True)} if r.since else {}
        )
        # an edge taken as gone that reports again was only slow: its report applies to what
        # it reported before, and the result counts again (no join-then-leave for a pair its
        # report removes)
        revived = not edge.alive
        edge.alive = True
        edge.last_seen = now
        edge.seq = r.seq
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
        if revived:  # its pairs count again from this report
            for key, n in pairs.items():
                self._add(key, n, now, events, _origin(r.edge, r.seq, r.seq))
        else:
            for key, old in changes.items():
                s = r.seq if returning else (since.get(key) or r.seq)
                quiet = first and s < r.seq
                origin = _origin(r.edge, r.seq, s)
                self._add(key, pairs.get(key, 0) - old, now, events, origin, quiet)
        return events

    def expire(self, now: float) -> list[PresenceEvent]:
        """Take silent edges out, forget long-silent ones, and emit the leaves that are due."""
        events: list[PresenceEvent] = []
        for name, edge in list(self._edges.items()):
            if edge.alive and now - edge.last_seen > self.silence_s:
                edge.alive = False
                for key, n in edge.pairs.items():
                    self._add(key, -n, now, events, _origin(name, edge.seq, f"silent {edge.seq}"))
            if not edge.alive and now - edge.last_seen > self.forget_s:
                del self._edges[name]
        due = [(key, origin) for key, (t, origin) in self._leaving.items() if t <= now]
        for key, origin in due:
            del self._leaving[key]
            self._leaves += 1
            channel, user = key
            events.append(
                PresenceEvent(
                    "leave",
                    channel,
                    user,
                    0,
                    event_id("leave", channel, user, origin) if origin else "",
                )
            )
        return events

    def edge_gone(self, name: str, now: float) -> list[PresenceEvent]:
        """``name`` stopped for good (its users go into their leave grace now)."""
        edge = self._edges.pop(name, None)
        events: list[PresenceEvent] = []
        if edge is not None and edge.alive:
            for key, n in edge.pairs.items():
                self._add(key, -n, now, events, _origin(name, edge.seq, f"gone {edge.seq}"))
        return events

    # -- internals --------------------------------------------------------------------------------

    def _add(
        self,
        key: Key,
        delta: int,
        now: float,
        events: list[PresenceEvent],
        origin: str = "",
        quiet: bool = False,
    ) -> None:
        """Change ``key``'s total by ``delta``; the id of the join or leave this makes derives
        from ``origin`` (the edge and the report number that listed the pair first, for a
        join; that made it absent, for a leave); ``quiet``: a join announced before (no
        event)."""
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
                    if quiet:
                        self._quiet += 1
                    else:
                        self._joins += 1
                        jid = event_id("join", channel, user, origin) if origin else ""
                        events.append(PresenceEvent("join", channel, user, after, jid))
        elif before:
            assert users is not None
            del users[user]
            if not users:
                del self._channels[channel]
            self._leaving[key] = (now + self.leave_grace_s, origin)

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
            quiet_joins=self._quiet,
        )
