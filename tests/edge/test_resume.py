"""edge.sync.resume.Catchup: one session catching up from a cursor (sans-IO, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.history import MemoryHistory
from broker.items import Item
from broker.wire import Envelope, ReplayReply, ReplayRequest
from edge.sync.resume import GATE_LIMIT, Catchup, Step, _Gate


def history(n: int, max_items: int = 1000, ids=True) -> MemoryHistory:
    h = MemoryHistory(max_items=max_items, new_epoch=lambda: "E")
    for i in range(1, n + 1):
        h.append(Item(channel="c", formats={}, id=f"m{i}" if ids else None), 0.0)
    return h


def reply(h: MemoryHistory, req: ReplayRequest) -> ReplayReply:
    r = h.replay(req.channel, req.epoch, req.after_seq, req.after_id, req.limit)
    return ReplayReply(None, req.channel, r.epoch, r.last_seq, r.complete, tuple(r.items))


def drive(c: Catchup, h: MemoryHistory) -> list[int]:
    out = []
    while (req := c.request()) is not None:
        out += [e.seq for e in c.on_reply(reply(h, req))]
    return out


@pytest.mark.parametrize(
    "n, cursor, limit, expect, failed",
    [
        (5, "m2", 1000, [3, 4, 5], False),  # publisher id
        (5, "E:3", 1000, [4, 5], False),  # broker cursor epoch:seq
        (5, "m5", 1000, [], False),  # up to date
        (2500, "m10", 1000, list(range(11, 2501)), False),  # paged (3 pages)
        (5, "unknown", 1000, [], True),  # history cannot answer
        (5, "OTHER:2", 1000, [], True),  # another epoch
        (0, "whatever", 1000, [], False),  # channel never had a message
    ],
)
def test_catchup_table(n, cursor, limit, expect, failed):
    h = history(n, max_items=5000)
    c = Catchup("c", cursor, limit=limit)
    assert drive(c, h) == expect
    assert c.failed is failed


def test_cursor_older_than_retained_history_fails():
    h = history(20, max_items=10)
    c = Catchup("c", "m3")
    assert drive(c, h) == [] and c.failed


def test_target_beyond_history_asks_for_more_then_live_dedupes():
    h = history(3)
    c = Catchup("c", "m1")
    assert drive(c, h) == [2, 3]
    for i in range(4, 7):  # published while the replay was answered; not yet live here
        h.append(Item(channel="c", formats={}, id=f"m{i}"), 0.0)
    assert c.plan([], ("E", 6)) == (Step.REPLAY, [])
    assert drive(c, h) == [4, 5, 6]
    live = [Envelope("c", s, "E", {}) for s in (5, 6)]
    assert c.plan(live, ("E", 6)) == (Step.DONE, []) and c.duplicates == 2
    assert c.accept_live(Envelope("c", 7, "E", {}))


def test_reply_that_overtook_the_pubsub_link_is_cut_at_the_tracker_position():
    """The duplicate at the hand-over (edge-kill test): the broker answers the replay with
    seq 4 and 5 while seq 5 is still on its way over PUB/SUB (the tracker is at 4).  Handing
    5 over from history and closing the gate then made live delivery hand it over again."""
    h = history(5)
    c = Catchup("c", "E:3")
    assert [e.seq for e in c.on_reply(reply(h, c.request()), ("E", 4))] == [4]
    assert c.request() is None
    assert c.plan([], ("E", 4)) == (Step.DONE, [])  # gate closed; 5 comes live, once
    assert c.last_seq == 4


def test_cursor_ahead_of_this_edge_waits_for_the_tracker():
    """A client from an edge that was ahead: its cursor (5) is past this edge's tracker (4);
    the gate stays until live delivery passed the cursor, dropping what the client has."""
    h = history(5)
    c = Catchup("c", "E:5")
    assert c.on_reply(reply(h, c.request()), ("E", 4)) == []
    assert c.plan([], ("E", 4)) == (Step.WAIT, [])
    backlog = [Envelope("c", 5, "E", {})]
    assert c.plan(backlog, ("E", 5)) == (Step.DONE, []) and backlog == [] and c.duplicates == 1


def test_dropped_gate_is_refetched_from_history():
    """A gate that overflowed (slow client) dropped what it held: history refills the hole
    before anything later is delivered."""
    h = history(8)
    c = Catchup("c", "E:2")
    assert [e.seq for e in c.on_reply(reply(h, c.request()), ("E", 3))] == [3]
    # the gate held 4..6 and overflowed (dropped); it collects again from 7
    backlog = [Envelope("c", 7, "E", {})]
    assert c.plan(backlog, ("E", 7)) == (Step.REPLAY, [])
    assert [e.seq for e in c.on_reply(reply(h, c.request()), ("E", 7))] == [4, 5, 6, 7]
    assert c.plan(backlog, ("E", 7)) == (Step.DONE, []) and backlog == []


def test_failed_catchup_lets_every_live_message_through():
    c = Catchup("c", "nope")
    c.on_reply(ReplayReply(None, "c", "E", 4, False))
    assert c.failed and c.request() is None
    assert c.accept_live(Envelope("c", 1, "E", {}))


def test_epoch_change_mid_catchup_skips_to_the_new_epoch():
    c = Catchup("c", "m1", limit=2)
    c.on_reply(
        ReplayReply(None, "c", "E", 9, True, tuple(Envelope("c", s, "E", {}) for s in (2, 3)))
    )
    got = c.on_reply(
        ReplayReply(None, "c", "F", 2, False, tuple(Envelope("c", s, "F", {}) for s in (1, 2)))
    )
    assert [e.seq for e in got] == [1, 2] and c.epoch == "F" and c.skipped


class Edge:
    """A model of one edge around a catch-up: the broker's history (last seq ``broker``), the
    tracker's position (``tracker`` <= ``broker``: what is between is still on the PUB/SUB
    link), the session's gate, and what the session received."""

    def __init__(self, h: MemoryHistory, tracker: int) -> None:
        self.h, self.tracker = h, tracker
        self.gate: list | None = []  # open from registration (before the first request)
        self.got: list[int] = []

    @property
    def broker(self) -> int:
        return self.h.position("c").last_seq

    def publish(self) -> None:
        n = self.broker + 1
        self.h.append(Item(channel="c", formats={}, id=f"m{n}"), 0.0)

    def arrive(self) -> None:
        """The next message reaches the edge: the tracker hands it to the gate or the session."""
        self.tracker += 1
        env = Envelope("c", self.tracker, "E", {})
        if self.gate is not None:
            self.gate.append(env)
        else:
            self.got.append(env.seq)

    def run(self, events: list[int]) -> None:
        """Things that happen while the catch-up awaits: 0 publish, 1 arrive, 2 both."""
        for ev in events:
            if ev in (0, 2):
                self.publish()
            if ev in (1, 2) and self.tracker < self.broker:
                self.arrive()


def run_catchup(edge: Edge, c: Catchup, awaits, overflow_at: set) -> None:
    """``Resumer``'s loop (edge.resume) against the model; ``awaits`` gives the events that
    happen at each await point (replies in flight, deliveries), ``overflow_at`` the sync points
    where the gate overflowed."""
    nxt = iter(awaits)

    def wait() -> None:
        edge.run(next(nxt, []))

    def page(req) -> list[int]:
        r = reply(edge.h, req)  # computed by the broker now ...
        wait()  # ... and handled after whatever happened meanwhile
        return [e.seq for e in c.on_reply(r, ("E", edge.tracker))]

    edge.got += page(c.request())  # probe (the first page)
    wait()
    backlog: list = []
    for point in range(10_000):
        if point in overflow_at:
            edge.gate.clear()
            backlog.clear()
        backlog += edge.gate
        edge.gate.clear()
        step, envs = c.plan(backlog, ("E", edge.tracker))
        if step is Step.DONE:
            edge.gate = None
            return
        assert step is not Step.CUT
        if step is Step.DELIVER:
            edge.got += [e.seq for e in envs]
            wait()
        elif step is Step.REPLAY:
            while (req := c.request()) is not None:
                edge.got += page(req)
        else:  # WAIT: the tracker is behind the client's cursor; it gets there by itself
            assert step is Step.WAIT and edge.tracker < edge.broker
            edge.arrive()
    raise AssertionError("the hand-over never completed")


events = st.lists(st.lists(st.integers(0, 2), max_size=4), max_size=12)


@given(
    n=st.integers(0, 40),
    lag=st.integers(0, 5),
    start=st.integers(0, 45),
    limit=st.integers(1, 7),
    awaits=events,
    overflow_at=st.sets(st.integers(0, 6), max_size=2),
    after=st.integers(0, 5),
)
def test_never_loses_never_duplicates(n, lag, start, limit, awaits, overflow_at, after):
    """Replay + live hand-over delivers exactly the messages after the cursor, in order,
    whatever arrives over PUB/SUB while replies are in flight (a reply may overtake the link),
    wherever the client's cursor is (behind this edge's tracker, or ahead of it: it came from
    an edge that was ahead), and when the gate drops what it held."""
    h = history(n, ids=False)
    edge = Edge(h, tracker=max(0, n - lag))
    start = min(start, n)
    c = Catchup("c", f"E:{start}", limit=limit)
    run_catchup(edge, c, awaits, overflow_at)
    for _ in range(after):  # live from here on
        edge.publish()
    while edge.tracker < edge.broker:
        edge.arrive()
    assert edge.got == list(range(start + 1, edge.broker + 1))


def test_gate_is_bounded_and_says_it_dropped():
    """The deliverer appends live envelopes to a session's gate; past GATE_LIMIT it drops
    them all and stops collecting (the catch-up refetches from history, edge.resume)."""
    g = _Gate()
    for s in range(1, GATE_LIMIT + 1):
        g.append(Envelope("c", s, "E", {}))
    assert len(g) == GATE_LIMIT and not g.overflowed
    g.append(Envelope("c", GATE_LIMIT + 1, "E", {}))
    g.append(Envelope("c", GATE_LIMIT + 2, "E", {}))
    assert g == [] and g.overflowed
