"""Tracker: deliver each channel's messages exactly once, in order, whatever the link does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.wire import Envelope, Marker
from edge.sync.tracker import (
    EpochChanged,
    GapSkipped,
    RequestPosition,
    RequestReplay,
    State,
    Tracker,
)

CH = "test"


def env(seq: int, epoch: str = "e1", channel: str = CH) -> Envelope:
    return Envelope(channel=channel, seq=seq, epoch=epoch, formats={})


def seqs(out) -> list[int]:
    return [e.seq for e in out]


def started(epoch="e1", last_seq=0) -> Tracker:
    t = Tracker()
    t.track(CH)
    assert t.take_actions() == [RequestPosition(CH, subscribed=True)]  # a marker may answer
    out = []
    t.on_position(CH, epoch, last_seq, out)
    assert out == []
    return t


def test_in_order_delivery_and_duplicates():
    t = started()
    out = []
    for s in (1, 2, 2, 1, 3):
        t.on_envelope(env(s), out)
    assert seqs(out) == [1, 2, 3]
    assert t.take_actions() == []
    assert t.statistics().duplicates == 2


def test_gap_asks_replay_and_holds_later_messages():
    t = started()
    out = []
    t.on_envelope(env(1), out)
    t.on_envelope(env(3), out)
    t.on_envelope(env(4), out)
    assert seqs(out) == [1]
    (req,) = t.take_actions()
    assert req == RequestReplay(CH, "e1", 1)
    assert t.state(CH) is State.REPLAYING
    t.on_replay(req, "e1", 4, [env(2), env(3), env(4)], True, out)
    assert seqs(out) == [1, 2, 3, 4]
    assert t.take_actions() == []
    assert t.state(CH) is State.LIVE


def test_messages_before_position_are_buffered():
    t = Tracker()
    t.track(CH)
    t.take_actions()
    out = []
    for s in (5, 6, 7):
        t.on_envelope(env(s), out)
    assert out == []
    t.on_position(CH, "e1", 5, out)
    assert seqs(out) == [6, 7]
    assert t.take_actions() == []


def test_marker_sets_position_and_reveals_a_lost_tail():
    t = Tracker()
    t.track(CH)
    t.take_actions()
    out = []
    t.on_marker(Marker(CH, "e1", 3), out)
    assert t.position(CH) == ("e1", 3)
    t.on_position(CH, "e1", 3, out)  # the late position reply changes nothing
    assert t.take_actions() == []
    t.on_marker(Marker(CH, "e1", 5), out)  # 4 and 5 were lost
    (req,) = t.take_actions()
    assert req.after_seq == 3
    t.on_replay(req, "e1", 5, [env(4), env(5)], True, out)
    assert seqs(out) == [4, 5]


def test_incomplete_history_skips_the_gap():
    t = started()
    out = []
    t.on_envelope(env(1), out)
    t.on_envelope(env(5), out)
    (req,) = t.take_actions()
    t.on_replay(req, "e1", 5, [env(4)], False, out)
    assert seqs(out) == [1, 4, 5]
    assert GapSkipped(CH, 2, 3) in t.take_actions()


def test_replay_failure_keeps_the_gap_until_repair():
    t = started()
    out = []
    t.on_envelope(env(3), out)
    (req,) = t.take_actions()
    t.on_replay_failed(req, out)
    assert out == [] and t.take_actions() == []  # nothing after the gap, nothing skipped
    assert t.gaps() == [CH]
    t.repair()
    (again,) = t.take_actions()
    assert again == RequestReplay(CH, "e1", 0) and again is not req
    t.repair()  # one in flight: no second request
    assert t.take_actions() == []
    t.on_replay(again, "e1", 3, [env(1), env(2), env(3)], True, out)
    assert seqs(out) == [1, 2, 3] and t.gaps() == []


def test_resync_asks_every_position_and_finds_a_lost_tail():
    t = started()
    out = []
    t.on_envelope(env(1), out)
    t.resync()
    assert t.take_actions() == [RequestPosition(CH)]
    t.on_position(CH, "e1", 3, out)  # seqs 2 and 3 were lost on the link
    (req,) = t.take_actions()
    assert req == RequestReplay(CH, "e1", 1)


def test_epoch_change_resyncs():
    """Another epoch on the link is checked against the broker's position; the answer
    confirms the new epoch and replay fetches what the link already showed."""
    t = started(last_seq=10)
    out = []
    t.on_envelope(env(1, epoch="e2"), out)
    t.on_envelope(env(2, epoch="e2"), out)
    assert out == [] and t.position(CH) == ("e1", 10)
    assert t.take_actions() == [RequestPosition(CH)]  # once, not per message
    assert t.wants_position(CH)
    t.on_position(CH, "e2", 2, out)
    assert not t.wants_position(CH)
    assert t.take_actions() == [EpochChanged(CH, "e1", "e2"), RequestReplay(CH, "e2", 0)]
    t.on_replay(RequestReplay(CH, "e2", 0), "e2", 2, [], True, out)  # not the request: ignored
    assert out == []
    t.on_envelope(env(3, epoch="e2"), out)  # held behind the gap
    stats = t.statistics()
    assert stats.other_epoch == 2 and stats.held == 1


def test_epoch_change_replay_delivers_the_new_epoch():
    t = started(last_seq=10)
    out = []
    t.on_envelope(env(1, epoch="e2"), out)
    t.take_actions()
    t.on_position(CH, "e2", 1, out)
    _, req = t.take_actions()
    t.on_replay(req, "e2", 1, [env(1, epoch="e2")], True, out)
    assert [(e.epoch, e.seq) for e in out] == [("e2", 1)]
    assert t.position(CH) == ("e2", 1) and t.state(CH) is State.LIVE


def test_stale_replay_answer_is_ignored():
    t = started()
    out = []
    t.on_envelope(env(2), out)
    (req,) = t.take_actions()
    t.on_envelope(env(1, epoch="e2"), out)
    assert t.take_actions() == [RequestPosition(CH)]
    t.on_position(CH, "e2", 1, out)  # epoch change supersedes the request
    t.take_actions()
    t.on_replay(req, "e1", 2, [env(1), env(2)], True, out)
    assert out == []


def test_stale_epoch_on_the_link_after_resync_is_not_delivered_again():
    """Regression (found by test_reliability_stateful): after the broker lost its history and
    the edge re-synchronised twice, a marker of the lost epoch still on the link arrived after
    the position answers had moved the track to the new epoch and replay had delivered its
    seq 1.  The marker reset the track to the old epoch and the live seq 1 then reset it to
    the new one again, delivering seq 1 twice."""
    t = Tracker()
    t.track(CH)
    assert t.take_actions() == [RequestPosition(CH, subscribed=True)]  # a marker may answer
    link = [Marker(CH, "e0", 0)]  # sent before the broker lost its history (then epoch e3)
    t.resync()
    t.resync()
    assert t.take_actions() == [RequestPosition(CH), RequestPosition(CH)]
    out: list[Envelope] = []
    t.on_position(CH, "e3", 0, out)  # a first answer: the new epoch, empty
    link.append(env(1, epoch="e3"))  # published; still on the link behind the stale marker
    t.on_position(CH, "e3", 1, out)  # a second answer reveals seq 1
    (req,) = t.take_actions()
    assert req == RequestReplay(CH, "e3", 0)
    t.on_replay(req, "e3", 1, [env(1, epoch="e3")], True, out)
    assert [(e.epoch, e.seq) for e in out] == [("e3", 1)]
    t.on_marker(link[0], out)
    t.on_envelope(link[1], out)
    assert [(e.epoch, e.seq) for e in out] == [("e3", 1)]  # delivered once
    assert t.position(CH) == ("e3", 1)
    actions = t.take_actions()
    assert not any(isinstance(a, EpochChanged) for a in actions)
    assert actions == [RequestPosition(CH)]  # the stale marker is checked, not believed
    t.on_position(CH, "e3", 1, out)
    assert t.take_actions() == [] and t.position(CH) == ("e3", 1) and out[1:] == []


def test_lost_epoch_message_after_the_answer_moved_on_is_not_delivered_again():
    """Regression (test_reliability_stateful): a duplicate of the lost epoch's seq 1 still on
    the link after a position answer reported the new epoch switched the track back to the
    lost epoch and delivered its seq 1 a second time."""
    t = started(epoch="e0")
    out: list[Envelope] = []
    t.on_envelope(env(1, epoch="e0"), out)
    t.on_position(CH, "e2", 0, out)  # the broker lost its history
    assert t.take_actions() == [EpochChanged(CH, "e0", "e2")]
    t.on_envelope(env(1, epoch="e0"), out)  # the duplicate, sent before the loss
    assert [(e.epoch, e.seq) for e in out] == [("e0", 1)]
    assert t.position(CH) == ("e2", 0)
    assert t.take_actions() == [RequestPosition(CH)]


def test_untracked_channel_is_ignored():
    t = Tracker()
    out = []
    t.on_envelope(env(1), out)
    t.on_marker(Marker(CH, "e1", 1), out)
    assert out == [] and t.take_actions() == []


# -- the property: exactly 1..N in order -----------------------------------------------------


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 40))
    ops = draw(
        st.lists(
            st.sampled_from(
                ["publish", "publish", "publish", "drop", "dup", "marker", "answer", "position"]
            ),
            min_size=0,
            max_size=150,
        )
    )
    limit = draw(st.integers(1, 5))
    return n, ops, limit


@settings(max_examples=400, deadline=None)
@given(schedules())
def test_property_exactly_once_in_order(schedule):
    n, ops, limit = schedule
    history: list[Envelope] = []  # what the broker has sequenced so far
    t = Tracker()
    t.track(CH)
    pending_position = True
    replays: list[RequestReplay] = []
    out: list[Envelope] = []
    position_at = None
    last_live = 0

    def collect():
        for a in t.take_actions():
            if isinstance(a, RequestReplay):
                replays.append(a)
            else:
                assert not isinstance(a, GapSkipped), "history is complete: nothing may be skipped"

    def answer_position():
        nonlocal pending_position, position_at
        pending_position = False
        position_at = len(history)
        t.on_position(CH, "e1", len(history), out)

    def answer_replay():
        req = replays.pop(0)
        items = [e for e in history if e.seq > req.after_seq][:limit]
        t.on_replay(req, "e1", len(history), items, True, out)

    t.take_actions()
    for op in ops:
        if op in ("publish", "drop") and len(history) < n:
            e = env(len(history) + 1)
            history.append(e)
            if op == "publish":
                t.on_envelope(e, out)
                last_live = e.seq
        elif op == "dup" and last_live:
            t.on_envelope(history[last_live - 1], out)
        elif op == "marker" and history:
            if pending_position:  # the marker arrived first: it is the position
                pending_position, position_at = False, len(history)
            t.on_marker(Marker(CH, "e1", len(history)), out)
        elif op == "position" and pending_position:
            answer_position()
        elif op == "answer" and replays:
            answer_replay()
        collect()
    while len(history) < n:
        history.append(env(len(history) + 1))
    if pending_position:
        answer_position()
        collect()
    t.on_marker(Marker(CH, "e1", n), out)  # what the broker sends on (re)subscribe
    collect()
    while replays:
        answer_replay()
        collect()
    if position_at is None:
        position_at = 0
    assert seqs(out) == list(range(position_at + 1, n + 1))


def test_repair_visits_only_channels_that_may_have_a_gap():
    """``repair`` costs the channels with a gap, not every tracked one (issue 16)."""
    t = Tracker()
    chans = [f"c{i}" for i in range(1000)]
    out: list[Envelope] = []
    for ch in chans:
        t.track(ch)
        t.on_position(ch, "e1", 0, out)
    t.take_actions()
    t.on_envelopes([env(1, channel=ch) for ch in chans], out)
    assert len(out) == 1000 and t.statistics().repair_candidates == 0
    t.on_envelope(env(3, channel="c7"), out)  # 2 lost
    (req,) = t.take_actions()
    t.on_replay_failed(req, out)
    assert t.statistics().repair_candidates == 1 and t.gaps() == ["c7"]
    t.repair()
    (again,) = t.take_actions()
    assert again == RequestReplay("c7", "e1", 1)
    t.on_replay(again, "e1", 3, [env(2, channel="c7")], True, out)
    assert t.state("c7") is State.LIVE and t.gaps() == []
    t.repair()  # finds the gap closed: the channel leaves the set
    assert t.take_actions() == [] and t.statistics().repair_candidates == 0


_batch_env = st.builds(
    env,
    st.integers(1, 8),
    st.sampled_from(["e1", "e1", "e1", "e2"]),
    st.sampled_from(["a", "b", CH, "untracked"]),
)


@given(
    batches=st.lists(st.lists(_batch_env, max_size=8), max_size=6),
    window=st.sampled_from([0.0, 0.05]),
    start=st.integers(0, 2),
)
@settings(max_examples=100, deadline=None)
def test_on_envelopes_is_on_envelope_for_each(batches, window, start):
    """The batch entry (its inlined in-order fast path) does what one call per envelope
    does: the same deliveries, actions and statistics."""
    one, many = Tracker(reorder_window_s=window), Tracker(reorder_window_s=window)
    for t in (one, many):
        for ch in ("a", "b", CH):
            t.track(ch)
        t.on_position("a", "e1", start, [])
        t.on_position("b", "e1", 0, [])  # CH stays positioning: held
    out_one: list[Envelope] = []
    out_many: list[Envelope] = []
    for k, batch in enumerate(batches):
        for e in batch:
            one.on_envelope(e, out_one, float(k))
        many.on_envelopes(batch, out_many, float(k))
        assert out_one == out_many
        assert one.take_actions() == many.take_actions()
        assert one.statistics() == many.statistics()


def test_position_below_what_was_delivered_is_an_epoch_change():
    """A Redis failover lost acknowledged writes and the broker answering did not see them:
    the same epoch with a lower seq.  Never silent: ``EpochChanged`` (sessions are told), and
    the track goes on from the store's seq, so the reused seqs are delivered, not dropped."""
    t = started(last_seq=10)
    t.resync()
    assert t.take_actions() == [RequestPosition(CH)]
    out = []
    t.on_position(CH, "e1", 7, out)
    assert t.take_actions() == [EpochChanged(CH, "e1", "e1")]
    assert t.position(CH) == ("e1", 7) and out == []
    t.on_envelope(env(8), out)
    assert seqs(out) == [8]
    st = t.statistics()
    assert st.seq_regressions == 1 and st.epoch_changes == 1 and st.duplicates == 0


def test_position_overtaken_by_live_messages_is_not_a_regression():
    """A position answer computed before messages the link delivered first is lower than
    ``last_seq`` but not than what was delivered when it was asked: no epoch change."""
    t = started(last_seq=10)
    t.resync()
    t.take_actions()
    out = []
    for s in (11, 12):
        t.on_envelope(env(s), out)
    t.resync()  # a second request while the first is unanswered keeps the first bound
    t.take_actions()
    t.on_position(CH, "e1", 11, out)
    assert t.take_actions() == [] and t.position(CH) == ("e1", 12)
    t.on_position(CH, "e1", 10, out)  # the second answer: no bound left, nothing happens
    assert t.take_actions() == [] and t.statistics().seq_regressions == 0


def test_other_epoch_check_also_catches_a_lower_seq():
    t = started(last_seq=5)
    out = []
    t.on_envelope(env(1, epoch="e2"), out)  # the link shows another epoch: position asked
    assert t.take_actions() == [RequestPosition(CH)]
    t.on_position(CH, "e1", 3, out)
    assert t.take_actions() == [EpochChanged(CH, "e1", "e1")] and t.position(CH) == ("e1", 3)
