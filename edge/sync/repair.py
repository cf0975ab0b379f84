"""Edge <-> broker link repair (sans-IO): noticing a broker restart or a lost link, and telling
held sessions when a channel's history was lost.

Theory of operation
-------------------
The broker sends a heartbeat every ``wire.HEARTBEAT_INTERVAL_S`` on its XPUB, carrying its
``broker_id`` (random per broker process); the edge also learns it from the ``hello`` reply.
``LinkWatch`` turns those observations, and the passing of time (``tick(now)``), into actions:

* ``Resync(reason)``: re-synchronise every live channel.  Emitted on the first heartbeat, when
  the ``broker_id`` changes (broker restarted: ZeroMQ reconnects the SUB and the DEALER and
  re-sends the SUB's subscriptions by itself, but anything published around the restart may
  have missed this edge), and when heartbeats come back after the link was lost.  The edge then
  asks each channel's ``position`` (``Tracker.resync``): the tracker replays what it missed, or
  reports ``EpochChanged`` when the broker's history for the channel is gone.
* ``LinkLost(silent_s)``: no heartbeat for ``timeout_s`` (``broker_link_timeout_s``, default 3
  heartbeat intervals).  Logged; held connections stay open (nothing is lost while the broker
  is away: what is published meanwhile is in its history when it is back).

Several brokers (docs/cluster.md): ``LinkWatches`` keeps one ``LinkWatch`` per broker, so a
broker going silent is *that broker* lost, not the edge's link.  The edge resyncs on a loss
too, when another broker is still up: a broker can die after storing a message in Redis and
before sending it, and the surviving broker's positions show that message (*tail repair*).

An epoch change means history was lost (a broker restart with the memory store, Redis losing
its data), and so does a gap older than history (``GapSkipped``): the edge never continues
silently.  ``tell_epoch_change(sessions, channel)`` applies
the policy to every session held on the channel (``Session.on_history_lost``):

* a WebSocket session is told and decides (it sends its origin a control event, or closes
  its client 1012 when the origin does not speak GRIP);
* an HTTP stream (incl. SSE) is closed without its final chunk: the client reconnects, the
  origin sees the request again and decides (resume from its cursor falls back to the origin,
  which may answer with fresh state);
* a response hold (long-poll) gets its timeout response now, as if its timeout had passed:
  the client polls again and the origin decides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.sessionstate import HistoryLost

if TYPE_CHECKING:
    from edge.sessionstate import Session


@dataclass(frozen=True, slots=True)
class Resync:
    reason: str
    broker_id: str


@dataclass(frozen=True, slots=True)
class LinkLost:
    silent_s: float


@dataclass(frozen=True, slots=True)
class LinkWatchStatistics:
    broker_id: str | None
    up: bool
    last_heartbeat: float | None
    restarts: int
    losses: int
    resyncs: int


class LinkWatch:
    def __init__(self, timeout_s: float, now: float) -> None:
        self.timeout_s = timeout_s
        self.broker_id: str | None = None
        self.up = False
        self._last: float | None = None
        self._since = now
        self._lost_reported = False
        self._restarts = self._losses = self._resyncs = 0

    def on_heartbeat(self, broker_id: str, now: float) -> list[Resync]:
        """A heartbeat (or hello reply) from broker ``broker_id`` arrived at ``now``."""
        self._last = now
        actions: list[Resync] = []
        if self.broker_id is None:
            actions.append(Resync("link up", broker_id))
        elif broker_id != self.broker_id:
            self._restarts += 1
            actions.append(Resync(f"broker restarted (was {self.broker_id})", broker_id))
        elif not self.up:
            actions.append(Resync("link back", broker_id))
        self.broker_id = broker_id
        self.up = True
        self._lost_reported = False
        self._resyncs += len(actions)
        return actions

    def on_activity(self, at: float) -> None:
        """Channel frames came from the broker at ``at``: it is alive, even if no heartbeat has
        arrived since it (re)started.  No ``Resync`` (the broker's identity is unknown here; a
        restart shows in its next heartbeat), but a later silence is a loss again: a broker
        that restarts and dies before its first heartbeat reaches this edge still makes the
        edge repair the tail it may have left."""
        if self._last is None or at > self._last:
            self._last = at
            if not self.up:
                self.up = True
                self._lost_reported = False

    def tick(self, now: float) -> list[LinkLost]:
        """Check for silence: ``LinkLost`` once per loss (also when never heard from)."""
        if self._lost_reported:
            return []
        ref = self._last if self._last is not None else self._since
        if now - ref > self.timeout_s:
            self.up = False
            self._lost_reported = True
            self._losses += 1
            return [LinkLost(now - ref)]
        return []

    def statistics(self) -> LinkWatchStatistics:
        return LinkWatchStatistics(
            self.broker_id, self.up, self._last, self._restarts, self._losses, self._resyncs
        )


class LinkWatches:
    """One ``LinkWatch`` per broker (``index``: its place in ``cfg.brokers``)."""

    def __init__(self, brokers: int, timeout_s: float, now: float) -> None:
        self.watches = [LinkWatch(timeout_s, now) for _ in range(brokers)]

    @property
    def up(self) -> bool:
        """Any broker heard from recently (the edge can publish stats, ask repairs)."""
        return any(w.up for w in self.watches)

    def up_count(self) -> int:
        return sum(w.up for w in self.watches)

    def on_heartbeat(self, index: int, broker_id: str, now: float) -> list[Resync]:
        return self.watches[index].on_heartbeat(broker_id, now)

    def on_activity(self, index: int, at: float) -> None:
        self.watches[index].on_activity(at)

    def tick(self, now: float) -> list[tuple[int, LinkLost]]:
        """``(index, LinkLost)`` for every broker that just went silent."""
        return [(i, lost) for i, w in enumerate(self.watches) for lost in w.tick(now)]

    def statistics(self) -> tuple[LinkWatchStatistics, ...]:
        return tuple(w.statistics() for w in self.watches)


@dataclass(frozen=True, slots=True)
class EpochNotice:
    """What ``tell_epoch_change`` did, for logs and statistics."""

    channel: str
    hooked: int  # sessions told through on_history_lost (WebSocket)
    streams_closed: int
    responses_answered: int


def tell_epoch_change(sessions: Iterable[Session], channel: str) -> EpochNotice:
    """Apply the epoch-change policy (module docstring) to ``sessions`` held on ``channel``
    (``Session.on_history_lost``)."""
    done = Counter(s.on_history_lost(channel) for s in list(sessions))
    return EpochNotice(
        channel, done[HistoryLost.TOLD], done[HistoryLost.CLOSED], done[HistoryLost.ANSWERED]
    )
