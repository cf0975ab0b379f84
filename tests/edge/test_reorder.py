"""The tracker with several brokers (sans-IO, fake clock): the reorder window, and a hypothesis
state machine over two brokers sharing one store (docs/cluster.md).

Two brokers each fan out what they sequenced, so one channel's messages arrive on two ordered
streams merged in any order; a broker can die with messages stored but never sent (tail
loss), its in-flight frames lost; the edge then resyncs from the surviving broker.  The
invariants: delivered per channel in order, exactly once, no hole; after settling, every
stored message after the tracker's baseline was delivered.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from broker.history import MemoryHistory
from broker.items import Item
from broker.wire import Envelope, Marker
from edge.sync.tracker import (
    EpochChanged,
    GapSkipped,
    RequestPosition,
    RequestReplay,
    Tracker,
)

CH = "test"
WINDOW = 0.05


def env(seq: int, epoch: str = "e1", channel: str = CH) -> Envelope:
    return Envelope(channel=channel, seq=seq, epoch=epoch, formats={})


def started(last_seq: int = 0, window: float = WINDOW) -> Tracker:
    t = Tracker(reorder_window_s=window)
    t.track(CH)
    assert t.take_actions() == [RequestPosition(CH, subscribed=True)]
    t.on_position(CH, "e1", last_seq, [], 0.0)
    assert t.take_actions() == []
    return t


def test_out_of_order_within_the_window_asks_no_replay():
    t = started()
    out: list[Envelope] = []
    t.on_envelope(env(1), out, 1.0)  # broker A
    t.on_envelope(env(3), out, 1.0)  # broker B: ahead of A's seq 2
    assert [e.seq for e in out] == [1]
    assert t.take_actions() == []  # no replay yet: seq 2 may be in flight on A
    assert t.next_deadline() == 1.0 + WINDOW
    t.on_envelope(env(2), out, 1.02)  # A's seq 2 arrives inside the window
    assert [e.seq for e in out] == [1, 2, 3]
    assert t.next_deadline() is None
    t.expire(2.0)
    assert t.take_actions() == []
    st_ = t.statistics()
    assert (st_.reordered, st_.replays, st_.reorder_waiting) == (1, 0, 0)


def test_a_gap_still_open_after_the_window_asks_a_replay_once():
    t = started()
    out: list[Envelope] = []
    t.on_envelope(env(2), out, 1.0)
    t.on_envelope(env(3), out, 1.01)  # the same gap: the deadline stays the first one
    assert out == [] and t.take_actions() == []
    t.expire(1.0 + WINDOW / 2)
    assert t.take_actions() == []
    t.repair(1.0 + WINDOW / 2)  # the periodic repair leaves a gap inside its window alone
    assert t.take_actions() == []
    t.expire(1.0 + WINDOW)
    (req,) = t.take_actions()
    assert req == RequestReplay(CH, "e1", 0)
    t.on_replay(req, "e1", 3, [env(1)], True, out)
    assert [e.seq for e in out] == [1, 2, 3]
    assert t.take_actions() == [] and t.gaps() == []


def test_a_marker_from_a_broker_ahead_waits_for_the_window():
    """Broker B's marker says seq 5 while broker A's seq 5 is still in flight."""
    t = started(last_seq=4)
    out: list[Envelope] = []
    t.on_marker(Marker(CH, "e1", 5), out, 2.0)
    assert t.take_actions() == []
    t.on_envelope(env(5), out, 2.01)
    assert [e.seq for e in out] == [5]
    t.expire(3.0)
    assert t.take_actions() == []


def test_tail_loss_found_by_the_resync_after_a_broker_is_lost():
    """A broker stored seq 2 and died before sending it: the resync's position (asked of the
    surviving broker) shows it, and after the window a replay fetches it."""
    t = started()
    out: list[Envelope] = []
    t.on_envelope(env(1), out, 1.0)
    t.resync()
    (pos,) = t.take_actions()
    assert pos == RequestPosition(CH)
    t.on_position(CH, "e1", 2, out, 4.0)
    assert t.take_actions() == []
    t.expire(4.0 + WINDOW)
    (req,) = t.take_actions()
    t.on_replay(req, "e1", 2, [env(2)], True, out)
    assert [e.seq for e in out] == [1, 2]


def test_window_zero_asks_at_once_as_with_one_broker():
    t = started(window=0.0)
    t.on_envelope(env(2), [], 1.0)
    assert t.take_actions() == [RequestReplay(CH, "e1", 0)]
    assert t.next_deadline() is None


def test_untrack_forgets_the_deadline():
    t = started()
    t.on_envelope(env(2), [], 1.0)
    t.untrack(CH)
    assert t.next_deadline() is None
    t.expire(9.0)
    assert t.take_actions() == []


# -- two brokers, one store ------------------------------------------------------------------

CHANNELS = ("a", "b")
BROKERS = (0, 1)


class TwoBrokersMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.now = 0.0
        self.history = MemoryHistory(max_items=10_000, new_epoch=lambda: "e1")  # the Redis
        self.tracker = Tracker(reorder_window_s=WINDOW)
        self.links: dict[int, list] = {b: [] for b in BROKERS}  # frames in flight per broker
        self.alive = set(BROKERS)
        self.requests: list = []
        self.counter = 0
        self.delivered: dict[str, list[int]] = {ch: [] for ch in CHANNELS}
        self.baseline: dict[str, int] = {}
        self.skipped: list[GapSkipped] = []
        for ch in CHANNELS:
            self.tracker.track(ch)
        self._collect()

    def _collect(self, out=None):
        for e in out or ():
            self.delivered[e.channel].append(e.seq)
        for a in self.tracker.take_actions():
            if isinstance(a, (RequestPosition, RequestReplay)):
                self.requests.append(a)
            elif isinstance(a, GapSkipped):
                self.skipped.append(a)
            else:
                assert not isinstance(a, EpochChanged), a

    def _store(self, ch: str) -> Envelope:
        self.counter += 1
        item = Item(channel=ch, formats={"http-stream": {"content": str(self.counter)}})
        return self.history.append(item, 1000.0)

    def _note_baseline(self, ch, last_seq):
        if self.tracker.state(ch).value == "position":
            self.baseline[ch] = last_seq

    # -- publishing through either broker -----------------------------------------------------

    @rule(ch=st.sampled_from(CHANNELS), b=st.sampled_from(BROKERS))
    def publish(self, ch, b):
        if b in self.alive:
            self.links[b].append(self._store(ch))

    @rule(ch=st.sampled_from(CHANNELS), b=st.sampled_from(BROKERS))
    def broker_dies_after_storing(self, ch, b):
        """Tail loss: stored, never sent; what the broker had in flight is lost too.  The
        edge notices the silence and, another broker being up, resyncs."""
        if b not in self.alive:
            return
        self._store(ch)
        self.alive.discard(b)
        self.links[b].clear()
        if self.alive:
            self.tracker.resync()
            self._collect()

    @rule(b=st.sampled_from(BROKERS))
    def broker_restarts(self, b):
        if b not in self.alive:
            self.alive.add(b)
            self.tracker.resync()  # its new broker_id: Resync
            self._collect()

    @rule(ch=st.sampled_from(CHANNELS), b=st.sampled_from(BROKERS))
    def marker(self, ch, b):
        if b in self.alive:
            pos = self.history.position(ch)
            self.links[b].append(Marker(ch, pos.epoch, pos.last_seq))

    # -- the links ---------------------------------------------------------------------------

    @rule(b=st.sampled_from(BROKERS), n=st.integers(1, 4))
    def receive(self, b, n):
        out: list[Envelope] = []
        link = self.links[b]
        envs: list[Envelope] = []  # envelopes in a row: one batch (edge.sync.markers)
        for msg in link[:n]:
            if isinstance(msg, Marker):
                self.tracker.on_envelopes(envs, out, self.now)
                envs = []
                self._note_baseline(msg.channel, msg.last_seq)
                self.tracker.on_marker(msg, out, self.now)
            else:
                envs.append(msg)
        self.tracker.on_envelopes(envs, out, self.now)
        del link[:n]
        self._collect(out)

    @precondition(lambda self: any(self.links.values()))
    @rule(i=st.integers(0, 100))
    def drop(self, i):
        frames = [(b, k) for b in BROKERS for k in range(len(self.links[b]))]
        b, k = frames[i % len(frames)]
        del self.links[b][k]

    # -- requests to any live broker (all read the same store) --------------------------------

    @precondition(lambda self: self.requests)
    @rule(i=st.integers(0, 100))
    def answer(self, i):
        req = self.requests.pop(i % len(self.requests))
        out: list[Envelope] = []
        if isinstance(req, RequestPosition):
            if not self.alive:
                self.requests.append(req)  # retried once a broker is back
                return
            pos = self.history.position(req.channel)
            self._note_baseline(req.channel, pos.last_seq)
            self.tracker.on_position(req.channel, pos.epoch, pos.last_seq, out, self.now)
        elif not self.alive:
            self.tracker.on_replay_failed(req, out)
        else:
            rep = self.history.replay(req.channel, req.epoch, req.after_seq, None, 3, 1000.0)
            self.tracker.on_replay(req, rep.epoch, rep.last_seq, rep.items, rep.complete, out)
        self._collect(out)

    @rule(dt=st.sampled_from([0.01, 0.03, 0.06, 1.0]))
    def time_passes(self, dt):
        self.now += dt
        self.tracker.expire(self.now)
        self._collect()

    @rule()
    def repair(self):
        if self.alive:
            self.tracker.repair(self.now)
            self._collect()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def every_gap_is_in_the_repair_set(self):
        tracker = self.tracker
        scanned = {ch for ch, t in tracker._tracks.items() if tracker._has_gap(t)}
        assert scanned <= tracker._open, scanned - tracker._open

    @invariant()
    def in_order_exactly_once(self):
        assert not self.skipped, self.skipped
        for ch in CHANNELS:
            got = self.delivered[ch]
            assert all(b == a + 1 for a, b in zip(got, got[1:])), (ch, got)

    def teardown(self):
        if not hasattr(self, "tracker"):
            return
        self.alive = set(BROKERS)
        self.tracker.resync()  # a broker back: Resync
        self._collect()
        for _ in range(10_000):
            busy = [b for b in BROKERS if self.links[b]]
            if busy:
                self.receive(busy[0], len(self.links[busy[0]]))
            elif self.requests:
                self.answer(0)
            elif self.tracker.next_deadline() is not None:
                self.time_passes(1.0)
            else:
                break
        self.in_order_exactly_once()
        for ch in CHANNELS:
            last = self.history.position(ch).last_seq
            base = self.baseline.get(ch, 0)
            after = [s for s in self.delivered[ch] if s > base]
            assert after == list(range(base + 1, last + 1)), (ch, after, base, last)


TwoBrokersMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestTwoBrokers = TwoBrokersMachine.TestCase
