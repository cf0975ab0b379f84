"""Per-channel sequence tracking (sans-IO): deliver each broker message once, in order.

Theory of operation
-------------------
The broker numbers each channel's messages 1, 2, 3, ... within an *epoch*.  The edge receives
them over ZeroMQ PUB/SUB, which keeps order but may drop (HWM, reconnect, slow joiner).  For
every channel the edge is subscribed to, a ``_Track`` holds ``(epoch, last_seq)``: the
position up to which everything has been handed to local sessions.

States (``State``):

* ``POSITION``: just subscribed; the position is unknown.  Live messages are buffered.  The
  first of the broker's ``position`` reply or the ``Marker`` the broker sends on the channel
  topic after the subscription becomes active sets ``(epoch, last_seq)``; buffered messages
  after it are then released (in order, repairing any gap).
* ``LIVE``: ``seq == last_seq + 1`` is delivered; ``seq <= last_seq`` is a duplicate and is
  dropped; a jump is a gap: the message is held back and a ``RequestReplay(after_seq =
  last_seq)`` is emitted -> ``REPLAYING`` (with several brokers, after the reorder window:
  below).
* ``REPLAYING``: one replay request is in flight.  Live messages keep being accepted: the next
  one is delivered (the gap may close by itself), later ones are held.  The reply's items are
  accepted the same way (duplicates drop out).  If a gap remains afterwards, another replay is
  asked when the last one made progress (history pages are bounded); when it made none or the
  broker said history is incomplete, the gap is skipped (``GapSkipped``) so the channel never
  stalls.

Positions and markers seen while ``LIVE`` raise the known high-water mark (``target``); a
target beyond ``last_seq`` with nothing in flight is a gap too (the last messages were lost).

Several brokers (docs/cluster.md): the edge subscribes to every broker and feeds all their
SUB sockets into this one tracker.  Each broker fans out what it sequenced itself, so one
channel's messages come from several ordered streams merged in any order: seq 7 (through
broker B) can arrive before seq 6 (through broker A), and a marker or position from one broker
can be ahead of what another broker still has in flight.  Ordering by seq already copes (6
and 7 are held, then delivered in order, duplicates drop out); what changes is that a gap is
no longer proof of a loss.  So with ``reorder_window_s > 0`` a gap seen on the link, or from a
marker or position, does not ask a replay at once: the channel gets a deadline ``now +
reorder_window_s`` and ``expire(now)`` (the caller's timer, woken for ``next_deadline()``)
asks the replay only if the gap is still open by then.  A gap that closes by itself costs no
round trip; a real loss (a broker died after storing and before sending) costs one window of
latency.  ``reorder_window_s = 0`` (one broker: PUB/SUB keeps order) asks at once, as before.
Replays and positions go to any live broker: they all read the same store.
A different epoch in a broker *answer* (``position``, ``replay``) means the broker lost the
channel's history (restart with the memory store): ``EpochChanged`` is reported (the edge
tells the channel's sessions: see ``edge.sync.repair``), the track restarts at
``(new epoch, 0)`` and repairs from there.

Once a track has an epoch, a new one is only believed from an answer, never from the link.
Answers travel on the request socket, the link on the SUB socket, and an answer can overtake
what the link still carries: after a history loss and a resync, the position reply may
already have moved the track to the new epoch (and replay delivered its first messages)
while a marker or message of the lost epoch is still in flight.  Epochs are random, not
ordered, so a link input of another epoch may be older or newer than the track's.  It is
dropped (counted in ``other_epoch``) and the position is asked (``checking``: once until the
next position answer); the answer decides.  If the epoch really changed, the position's
``last_seq`` covers what was dropped and replay fetches it.  Comparing epochs is the check
the hot path already makes; only the rare mismatch takes this path.

A seq that went backwards is an epoch change too (docs/cluster.md, "Seq went backwards"): a
Redis failover without ``redis_wait_replicas`` can lose acknowledged writes, and the store then
answers the same epoch with a lower seq than this edge delivered; its next seqs would be taken
for duplicates and dropped.  Brokers move such a channel to a new epoch themselves when they
saw the higher seq; a broker that did not (it restarted) answers the lower seq.  So a position
answer in the track's epoch below ``asked`` (the track's ``last_seq`` when the first position
request still unanswered was asked: the store held at least that much when it answered, so a
live message overtaking the answer cannot cause it) is reported as ``EpochChanged`` (old and
new the same epoch) and the track goes on from the answer's ``last_seq``.

A replay that could not be answered (broker down or restarting) leaves the gap in place and
the later messages held: ``repair(now)`` (called periodically, and after the link comes back)
asks again (leaving alone a gap still inside its reorder window); it visits only the
channels that may have a gap (a set every change that can open one adds to), so its cost
follows the channels needing repair, not the channels tracked.  Nothing after a gap is delivered before the gap is filled or history says it is
gone (``GapSkipped``).  ``resync()`` asks every channel's position again (after a broker
restart or a lost link; with several brokers, when any one of them is lost: the messages it
stored in Redis but never sent are then found through another broker's position, the *tail
repair*): a position beyond ``last_seq`` is a gap, another epoch an ``EpochChanged``.

``on_envelopes`` takes a batch of link envelopes (``edge.sync.markers`` passes each run
between markers): the in-order case (next seq, nothing held or known beyond it, no reorder
deadline pending) is inlined there, everything else goes through ``on_envelope``.

Outputs: deliverable ``Envelope``s are appended to the caller's ``out`` list (batch friendly);
actions (``RequestPosition``, ``RequestReplay``, ``EpochChanged``, ``GapSkipped``) accumulate
until ``take_actions()``.  Held messages are bounded (``max_held``); one dropped there is just
fetched again by the next replay.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from _speedups import held_marks
from broker.wire import Envelope, Marker

MAX_HELD = 10_000


class State(enum.Enum):
    POSITION = "position"
    LIVE = "live"
    REPLAYING = "replaying"


@dataclass(frozen=True, slots=True)
class RequestPosition:
    channel: str
    # the channel was just subscribed: the broker's marker on subscribe usually brings the
    # position first (the caller may ask later, only if it did not)
    subscribed: bool = False


@dataclass(frozen=True, slots=True)
class RequestReplay:
    channel: str
    epoch: str
    after_seq: int


@dataclass(frozen=True, slots=True)
class EpochChanged:
    channel: str
    old: str | None
    new: str


@dataclass(frozen=True, slots=True)
class GapSkipped:
    channel: str
    first_seq: int
    last_seq: int


# a channel's ``(epoch, last_seq)`` (``Tracker.position``)
Position = tuple[str | None, int]

# what ``take_actions`` returns (the caller performs them)
Action = RequestPosition | RequestReplay | EpochChanged | GapSkipped


@dataclass(frozen=True, slots=True)
class TrackerStatistics:
    channels: int
    delivered: int
    duplicates: int
    gaps: int
    replays: int
    skipped: int
    epoch_changes: int
    held: int
    replay_failures: int
    positioning: int  # channels whose position the broker has not told yet
    other_epoch: int  # link inputs of another epoch than the track's (dropped, position asked)
    reordered: int = 0  # gaps that closed by themselves within the reorder window
    reorder_waiting: int = 0  # channels whose gap is inside its reorder window now
    repair_candidates: int = 0  # channels ``repair`` visits (may have a gap; not all tracked)
    seq_regressions: int = 0  # position answers below what was delivered (epoch changes too)


class _Track:
    __slots__ = ("state", "epoch", "last_seq", "target", "held", "inflight", "checking", "asked")

    def __init__(self) -> None:
        self.state = State.POSITION
        self.epoch: str | None = None
        self.last_seq = 0
        self.target = 0
        self.held: dict[int, Envelope] = {}
        self.inflight: RequestReplay | None = None
        self.checking = False  # a position asked because the link showed another epoch
        self.asked: int | None = None  # last_seq when an unanswered position was first asked


class Tracker:
    def __init__(self, max_held: int = MAX_HELD, reorder_window_s: float = 0.0) -> None:
        self.max_held = max_held
        self.reorder_window_s = reorder_window_s
        self._due: dict[str, float] = {}  # channel -> when its open gap gets a replay
        self._reordered = 0
        self._tracks: dict[str, _Track] = {}
        # channels that may have a gap (a superset of those that do: every change that can
        # open one adds the channel; ``repair`` and ``gaps`` drop the ones whose gap closed),
        # so ``repair`` costs the channels needing it, not every tracked one
        self._open: set[str] = set()
        self._actions: list[Action] = []
        self._delivered = self._duplicates = self._gaps = 0
        self._replays = self._skipped = self._epoch_changes = 0
        self._stalled = self._other_epoch = 0
        self._seq_regressions = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def track(self, channel: str) -> None:
        """Start tracking a newly subscribed channel: asks for its position."""
        if channel not in self._tracks:
            self._tracks[channel] = _Track()
            self._actions.append(RequestPosition(channel, subscribed=True))

    def untrack(self, channel: str) -> None:
        self._tracks.pop(channel, None)
        self._due.pop(channel, None)
        self._open.discard(channel)

    def is_tracked(self, channel: str) -> bool:
        return channel in self._tracks

    def state(self, channel: str) -> State | None:
        t = self._tracks.get(channel)
        return t.state if t else None

    def position(self, channel: str) -> Position | None:
        t = self._tracks.get(channel)
        return (t.epoch, t.last_seq) if t else None

    def live_position(self, channel: str) -> Position | None:
        """``position`` of a ``LIVE`` channel whose epoch is known, else None (one call for
        the marker check of ``edge.sync.markers``)."""
        t = self._tracks.get(channel)
        if t is None or t.state is not State.LIVE or t.epoch is None:
            return None
        return (t.epoch, t.last_seq)

    def wants_position(self, channel: str) -> bool:
        """Whether a position answer is still needed (to retry one that failed)."""
        t = self._tracks.get(channel)
        return t is not None and (t.state is State.POSITION or t.checking)

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    # -- inputs ------------------------------------------------------------------------------

    def on_envelope(self, env: Envelope, out: list[Envelope], now: float = 0.0) -> None:
        """A message from the link (any broker's); ``now`` starts a reorder window."""
        channel = env.channel
        t = self._tracks.get(channel)
        if t is None:
            return
        if t.state is State.POSITION:
            self._hold(t, env)
            return
        if env.epoch != t.epoch:
            self._link_other_epoch(channel, t)
            return
        seq = env.seq
        if seq == t.last_seq + 1 and not t.held and seq > t.target:
            # the in-order fast path: nothing held, nothing known beyond it
            out.append(env)
            t.last_seq = t.target = seq
            self._delivered += 1
            if self._due and channel in self._due:
                del self._due[channel]  # the gap closed within its window
                self._reordered += 1
            return
        self._accept(channel, t, env, out)
        if t.held:
            if t.state is State.LIVE:
                self._gap(channel, t, now)
        elif self._due and channel in self._due and t.target <= t.last_seq:
            del self._due[channel]  # the gap closed within its window
            self._reordered += 1

    def on_envelopes(self, envs: list[Envelope], out: list[Envelope], now: float = 0.0) -> None:
        """``on_envelope`` for each of ``envs`` (a batch from the link, in arrival order)."""
        tracks = self._tracks
        live = State.LIVE
        n = 0
        for env in envs:
            t = tracks.get(env.channel)
            # the in-order fast path inlined (as in ``on_envelope``); anything else goes there
            if (
                t is not None
                and t.state is live
                and env.seq == t.last_seq + 1
                and env.seq > t.target
                and not t.held
                and env.epoch == t.epoch
                and not self._due
            ):
                out.append(env)
                t.last_seq = t.target = env.seq
                n += 1
            else:
                self.on_envelope(env, out, now)
        self._delivered += n

    def on_marker(self, marker: Marker, out: list[Envelope], now: float = 0.0) -> None:
        t = self._tracks.get(marker.channel)
        if t is not None and t.state is not State.POSITION and marker.epoch != t.epoch:
            self._link_other_epoch(marker.channel, t)
            return
        self._observe(marker.channel, marker.epoch, marker.last_seq, out, now)

    def on_marks(
        self, marks: Sequence[tuple[str, str, int]], out: list[Envelope], now: float = 0.0
    ) -> int:
        """A heartbeat's trailing positions ``(channel, epoch, last_seq)`` (``on_marker`` for
        each).  Those of channels not tracked here, and of ``LIVE`` channels already delivered
        up to them, change nothing and are skipped in the loop; returns how many were."""
        tracks = self._tracks
        live = State.LIVE
        skipped = 0
        for channel, epoch, last_seq in marks:
            t = tracks.get(channel)
            if t is None or (t.state is live and epoch == t.epoch and last_seq <= t.last_seq):
                skipped += 1
                continue
            self.on_marker(Marker(channel, epoch, last_seq), out, now)
        return skipped

    def on_packed_marks(
        self, data: bytes, out: list[Envelope], now: float = 0.0
    ) -> tuple[int, int]:
        """``on_marks`` for a heartbeat's packed positions (``broker.wire.encode_marks``),
        read by ``_speedups.held_marks``: every entry is checked (``RemoteProtocolError``
        when one is bad, nothing applied), and only those of channels tracked here and not
        delivered up to them are built and go to ``on_marks``, so a heartbeat costs the edge
        little for the channels it does not hold.  Returns ``(read, skipped)``: the positions
        in ``data``, and how many of them changed nothing (as ``on_marks`` counts)."""
        count, selected = held_marks(data, self._tracks, State.LIVE)
        skipped = count - len(selected)
        if selected:
            skipped += self.on_marks(selected, out, now)
        return count, skipped

    def on_position(
        self, channel: str, epoch: str, last_seq: int, out: list[Envelope], now: float = 0.0
    ) -> None:
        t = self._tracks.get(channel)
        if t is not None:
            t.checking = False
            asked, t.asked = t.asked, None
            if (
                asked is not None
                and t.state is not State.POSITION
                and epoch == t.epoch
                and last_seq < asked
            ):
                self._seq_went_back(channel, t, last_seq)
                return
        self._observe(channel, epoch, last_seq, out, now)

    def next_deadline(self) -> float | None:
        """When ``expire`` has something to do (the earliest reorder deadline), or None."""
        return min(self._due.values()) if self._due else None

    def expire(self, now: float) -> None:
        """Ask a replay for every gap whose reorder window has passed and is still open."""
        if not self._due:
            return
        due = [ch for ch, at in self._due.items() if at <= now]
        for ch in due:
            del self._due[ch]
            t = self._tracks.get(ch)
            if t is None or t.state is not State.LIVE or t.inflight is not None:
                continue
            if self._has_gap(t):
                self._ask_replay(ch, t)
            else:
                self._reordered += 1

    def on_replay(
        self,
        request: RequestReplay,
        epoch: str,
        last_seq: int,
        items: list[Envelope],
        complete: bool,
        out: list[Envelope],
    ) -> None:
        """The broker's answer to ``request`` (answers to superseded requests are ignored)."""
        channel = request.channel
        t = self._tracks.get(channel)
        if t is None or t.inflight is not request:
            return
        t.inflight = None
        before = request.after_seq
        if epoch != t.epoch:
            self._new_epoch(channel, t, epoch)
            complete, before = True, 0  # the items are the new epoch's retained history
        for env in sorted(items, key=_seq):
            if env.epoch == t.epoch:
                self._accept(channel, t, env, out)
        t.target = max(t.target, last_seq)
        t.state = State.LIVE
        if not self._has_gap(t):
            return
        self._open.add(channel)
        if t.last_seq > before and complete:
            self._ask_replay(channel, t)  # more pages to fetch
        else:
            self._skip_gap(channel, t, out)

    def on_replay_failed(self, request: RequestReplay, out: list[Envelope]) -> None:
        """``request`` could not be answered (broker down): keep the gap for ``repair()``."""
        channel = request.channel
        t = self._tracks.get(channel)
        if t is None or t.inflight is not request:
            return
        t.inflight = None
        t.state = State.LIVE
        self._stalled += 1

    def repair(self, now: float | None = None) -> None:
        """Ask a replay again for every channel with a gap and no replay in flight (but not
        for a gap inside its reorder window at ``now``: ``expire`` asks for those).  Costs
        the channels that may have a gap (``_open``), not every tracked channel."""
        due = self._due
        tracks = self._tracks
        for channel in list(self._open):
            t = tracks.get(channel)
            if t is None or not self._has_gap(t):
                self._open.discard(channel)
                continue
            if t.state is State.LIVE and t.inflight is None:
                if due and now is not None and due.get(channel, now) > now:
                    continue
                due.pop(channel, None)
                self._ask_replay(channel, t)

    def resync(self) -> None:
        """Ask every tracked channel's position again (after a broker restart or link loss)."""
        for channel, t in self._tracks.items():
            self._asked(t)
            self._actions.append(RequestPosition(channel))

    def gaps(self) -> list[str]:
        """Channels with a gap not yet repaired (for statistics and tests)."""
        tracks = self._tracks
        return [ch for ch in self._open if ch in tracks and self._has_gap(tracks[ch])]

    # -- internals ---------------------------------------------------------------------------

    def _observe(
        self, channel: str, epoch: str, last_seq: int, out: list[Envelope], now: float = 0.0
    ) -> None:
        t = self._tracks.get(channel)
        if t is None:
            return
        if t.state is State.POSITION:
            t.state, t.epoch, t.last_seq, t.target = State.LIVE, epoch, last_seq, last_seq
            early, t.held = t.held, {}
            for seq in sorted(early):
                env = early[seq]
                if env.epoch == epoch:
                    self._accept(channel, t, env, out)
        else:
            if epoch != t.epoch:
                self._new_epoch(channel, t, epoch)
            t.target = max(t.target, last_seq)
        if self._has_gap(t):
            self._open.add(channel)
            if t.state is State.LIVE:
                self._gap(channel, t, now)

    def _gap(self, channel: str, t: _Track, now: float) -> None:
        """A gap seen on a ``LIVE`` track: replay now, or once its reorder window passed."""
        if self.reorder_window_s <= 0:
            self._ask_replay(channel, t)
        elif channel not in self._due:
            self._due[channel] = now + self.reorder_window_s

    def _link_other_epoch(self, channel: str, t: _Track) -> None:
        """The link showed an epoch other than the track's: maybe stale, maybe new (theory of
        operation).  Drop the input and let the broker's position decide."""
        self._other_epoch += 1
        if not t.checking:
            t.checking = True
            self._asked(t)
            self._actions.append(RequestPosition(channel))

    def _accept(self, channel: str, t: _Track, env: Envelope, out: list[Envelope]) -> None:
        seq = env.seq
        if seq <= t.last_seq:
            self._duplicates += 1
            return
        if seq > t.target:
            t.target = seq
        if seq != t.last_seq + 1:
            self._hold(t, env)
            return
        out.append(env)
        t.last_seq = seq
        self._delivered += 1
        held = t.held
        if held:
            nxt = seq + 1
            while nxt in held:
                out.append(held.pop(nxt))
                t.last_seq = nxt
                self._delivered += 1
                nxt += 1

    def _hold(self, t: _Track, env: Envelope) -> None:
        self._open.add(env.channel)
        if env.seq > t.target:
            t.target = env.seq
        if env.seq in t.held:
            self._duplicates += 1
        elif len(t.held) < self.max_held:
            t.held[env.seq] = env

    @staticmethod
    def _has_gap(t: _Track) -> bool:
        return bool(t.held) or t.target > t.last_seq

    def _ask_replay(self, channel: str, t: _Track) -> None:
        if self._due:
            self._due.pop(channel, None)
        t.state = State.REPLAYING
        self._gaps += 1
        self._replays += 1
        t.inflight = RequestReplay(channel, t.epoch or "", t.last_seq)
        self._actions.append(t.inflight)

    def _skip_gap(self, channel: str, t: _Track, out: list[Envelope]) -> None:
        first = t.last_seq + 1
        new_last = (min(t.held) - 1) if t.held else t.target
        self._skipped += new_last - t.last_seq
        self._actions.append(GapSkipped(channel, first, new_last))
        t.last_seq = new_last
        if t.held:
            nxt = new_last + 1
            while nxt in t.held:
                out.append(t.held.pop(nxt))
                t.last_seq = nxt
                self._delivered += 1
                nxt += 1
        if self._has_gap(t):
            self._ask_replay(channel, t)

    @staticmethod
    def _asked(t: _Track) -> None:
        if t.asked is None and t.state is not State.POSITION:
            t.asked = t.last_seq

    def _seq_went_back(self, channel: str, t: _Track, last_seq: int) -> None:
        """The store's seq is below what this edge delivered in the same epoch (theory of
        operation): tell the sessions as for an epoch change, go on from ``last_seq``."""
        self._seq_regressions += 1
        self._new_epoch(channel, t, t.epoch or "")
        t.last_seq = t.target = last_seq

    def _new_epoch(self, channel: str, t: _Track, epoch: str) -> None:
        self._epoch_changes += 1
        self._due.pop(channel, None)
        self._actions.append(EpochChanged(channel, t.epoch, epoch))
        t.epoch, t.last_seq, t.target, t.held, t.inflight = epoch, 0, 0, {}, None
        if t.state is State.REPLAYING:
            t.state = State.LIVE

    def statistics(self) -> TrackerStatistics:
        return TrackerStatistics(
            channels=len(self._tracks),
            delivered=self._delivered,
            duplicates=self._duplicates,
            gaps=self._gaps,
            replays=self._replays,
            skipped=self._skipped,
            epoch_changes=self._epoch_changes,
            held=sum(len(t.held) for ch in self._open if (t := self._tracks.get(ch)) is not None),
            replay_failures=self._stalled,
            positioning=sum(1 for t in self._tracks.values() if t.state is State.POSITION),
            other_epoch=self._other_epoch,
            reordered=self._reordered,
            reorder_waiting=len(self._due),
            repair_candidates=len(self._open),
            seq_regressions=self._seq_regressions,
        )


def _seq(env: Envelope) -> int:
    return env.seq
