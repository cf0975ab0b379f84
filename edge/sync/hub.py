"""The edge's subscription hub (sans-IO): channel -> the sessions held on it.

The first local session on a channel yields ``Subscribe(channel)`` (the caller subscribes the
SUB socket and asks the broker for the channel's position); when the last one leaves, the
channel lingers ``linger_s`` (time is passed in as ``now``) and ``expire(now)`` then yields
``Unsubscribe(channel)``.  A session arriving during the linger revives the channel silently.
Sessions are any hashable objects.  When ``changed`` is a set (``edge.ops.connstats`` sets it),
every channel a session joins or leaves is added to it (the stats report takes and clears it).
A session with a ``kind`` (the edge's: "stream", "response", "ws") is also counted by kind,
per channel and in all (``kinds``, ``kind_totals``), kept as sessions come and go: the stats
report asks for a changed channel's counts up to ten times a second while clients connect,
and counting the channel's sessions each time cost O(sessions) per report.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

S = TypeVar("S", bound=Hashable)  # a session: any hashable object

DEFAULT_LINGER_S = 5.0


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class HubStatistics:
    channels: int
    lingering: int
    sessions: int
    subscriptions: int


_EMPTY: frozenset[Any] = frozenset()


class Hub(Generic[S]):
    def __init__(self, linger_s: float = DEFAULT_LINGER_S) -> None:
        self.linger_s = linger_s
        self._members: dict[str, set[S]] = {}
        self._of_session: dict[S, tuple[str, ...]] = {}
        self._lingering: dict[str, float] = {}  # channel -> unsubscribe deadline
        self._subscriptions = 0
        self.changed: set[str] | None = None
        self._kinds: dict[str, dict[str, int]] = {}  # channel -> {kind: sessions}
        self._kind_totals: dict[str, int] = {}  # kind -> sessions registered

    def add(self, session: S, channels: Iterable[str], now: float) -> list[Subscribe]:
        """Register ``session`` on ``channels``; returns the channels that need subscribing."""
        if session in self._of_session:
            raise ValueError("session already registered")
        chans = tuple(dict.fromkeys(channels))
        self._of_session[session] = chans
        if self.changed is not None:
            self.changed.update(chans)
        actions = []
        for ch in chans:
            members = self._members.get(ch)
            if members is None:
                members = self._members[ch] = set()
                if self._lingering.pop(ch, None) is None:
                    actions.append(Subscribe(ch))
            members.add(session)
            self._subscriptions += 1
        kind = getattr(session, "kind", None)
        if kind is not None:
            totals = self._kind_totals
            totals[kind] = totals.get(kind, 0) + 1
            for ch in chans:
                counts = self._kinds.get(ch)
                if counts is None:
                    counts = self._kinds[ch] = {}
                counts[kind] = counts.get(kind, 0) + 1
        return actions

    def remove(self, session: S, now: float) -> None:
        """Unregister ``session`` (no-op if unknown); emptied channels start lingering."""
        chans = self._of_session.pop(session, None)
        if chans is None:
            return
        if self.changed is not None:
            self.changed.update(chans)
        for ch in chans:
            members = self._members.get(ch)
            if members is None:
                continue
            members.discard(session)
            self._subscriptions -= 1
            if not members:
                del self._members[ch]
                self._lingering[ch] = now + self.linger_s
        kind = getattr(session, "kind", None)
        if kind is not None:
            _decrement(self._kind_totals, kind)
            for ch in chans:
                counts = self._kinds.get(ch)
                if counts is not None:
                    _decrement(counts, kind)
                    if not counts:
                        del self._kinds[ch]

    def expire(self, now: float) -> list[Unsubscribe]:
        """Channels whose linger ran out: unsubscribe them."""
        due = [ch for ch, t in self._lingering.items() if t <= now]
        for ch in due:
            del self._lingering[ch]
        return [Unsubscribe(ch) for ch in due]

    def members_map(self) -> dict[str, set[S]]:
        """Channel -> its sessions, the hub's own map (read-only for callers: the compiled
        delivery path, ``_speedups.queue_singles``, looks channels up in it)."""
        return self._members

    def sessions(self, channel: str) -> AbstractSet[S]:
        """The sessions on ``channel`` (a live set: copy it before awaiting)."""
        return self._members.get(channel, _EMPTY)

    def kinds(self, channel: str) -> dict[str, int]:
        """``{kind: sessions}`` on ``channel`` (sessions without a ``kind`` are not counted)."""
        return dict(self._kinds.get(channel, ()))

    def kind_totals(self) -> dict[str, int]:
        """``{kind: sessions}`` over every registered session that has a ``kind``."""
        return dict(self._kind_totals)

    def channels_of(self, session: S) -> tuple[str, ...]:
        return self._of_session.get(session, ())

    def is_live(self, channel: str) -> bool:
        """Subscribed on the broker link (has sessions or is lingering)."""
        return channel in self._members or channel in self._lingering

    def all_sessions(self) -> list[S]:
        """Every registered session (a copy: safe to iterate across awaits)."""
        return list(self._of_session)

    def live_channels(self) -> list[str]:
        return list(self._members) + list(self._lingering)

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            channels=len(self._members),
            lingering=len(self._lingering),
            sessions=len(self._of_session),
            subscriptions=self._subscriptions,
        )


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
