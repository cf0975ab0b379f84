"""Repeated trailing markers on the edge (edge.sync.markers, issue 16), sans-IO: a repeat is
not decoded again and skipped only when the tracker would do nothing with it; the lost tail
is still found, by the first marker or by its repeat."""

from __future__ import annotations

from broker import wire
from broker.wire import Envelope, Marker
from edge.sync.markers import MarkerMemo, feed_frames
from edge.sync.tracker import RequestReplay, State, Tracker


def _env(ch, seq, epoch="e1"):
    return wire.encode_envelope(Envelope(ch, seq, epoch, {"http-stream": {"content": f"{seq}"}}))


def _live(channel="a", epoch="e1", last_seq=0):
    t = Tracker()
    t.track(channel)
    t.on_position(channel, epoch, last_seq, [])
    t.take_actions()
    assert t.state(channel) is State.LIVE
    return t


def test_memo_recognises_only_markers_it_has_seen_within_two_intervals():
    memo = MarkerMemo(interval_s=1.0)
    m1 = wire.encode_marker("a", "e1", 3)
    memo.rotate(0.0)
    assert memo.seen(m1) is None
    assert memo.seen(_env("a", 1)) is None  # an envelope: never a repeat
    assert memo.seen(b"\x00hb\x00whatever") is None
    memo.remember(m1, Marker("a", "e1", 3))
    assert memo.seen(m1) == Marker("a", "e1", 3)
    assert memo.seen(wire.encode_marker("a", "e1", 4)) is None  # another position
    memo.rotate(1.0)  # one interval later: still known (the broker's second round)
    assert memo.seen(m1) == Marker("a", "e1", 3)  # and kept for one more interval
    memo.rotate(2.0)
    assert memo.seen(m1) == Marker("a", "e1", 3)
    memo.rotate(3.0)
    memo.rotate(4.0)
    assert memo.seen(m1) is None  # not seen for two intervals: forgotten
    st = memo.statistics()
    assert (st.remembered, st.repeats) == (0, 3)


def test_repeat_of_a_delivered_position_is_skipped():
    t, memo, out = _live(last_seq=0), MarkerMemo(), []
    feed_frames([_env("a", 1), _env("a", 2), wire.encode_marker("a", "e1", 2)], t, memo, 0.0, out)
    assert [e.seq for e in out] == [1, 2]
    feed_frames([wire.encode_marker("a", "e1", 2)], t, memo, 1.0, out)  # second round
    assert memo.repeats == 1
    assert t.position("a") == ("e1", 2) and t.take_actions() == []


def test_lost_tail_found_by_the_first_marker():
    t, memo, out = _live(last_seq=0), MarkerMemo(), []
    feed_frames([_env("a", 1), wire.encode_marker("a", "e1", 3)], t, memo, 0.0, out)  # 2, 3 lost
    assert t.take_actions() == [RequestReplay("a", "e1", 1)]
    assert t.state("a") is State.REPLAYING


def test_lost_tail_found_by_the_repeat_when_the_first_marker_was_lost_too():
    t, memo, out = _live(last_seq=0), MarkerMemo(), []
    feed_frames([_env("a", 1)], t, memo, 0.0, out)  # 2, 3 and the first marker lost
    feed_frames([wire.encode_marker("a", "e1", 3)], t, memo, 1.0, out)
    assert t.take_actions() == [RequestReplay("a", "e1", 1)]


def test_repeat_reaches_the_tracker_when_the_channel_is_behind_it():
    """A channel tracked anew (positioning) or behind the marker gets the repeat as a marker."""
    t, memo, out = _live(last_seq=0), MarkerMemo(), []
    m = wire.encode_marker("a", "e1", 5)
    feed_frames([m], t, memo, 0.0, out)
    assert t.take_actions() == [RequestReplay("a", "e1", 0)]
    t.untrack("a")
    t.track("a")  # unsubscribed and subscribed again within the memo's window
    t.take_actions()
    feed_frames([m], t, memo, 0.5, out)  # the repeat positions the new track
    assert memo.repeats == 1
    assert t.state("a") is State.LIVE and t.position("a") == ("e1", 5)


def test_bad_frames_are_skipped():
    t, memo, out = _live(last_seq=0), MarkerMemo(), []
    feed_frames([b"no separator", b"a\x00\xc1", _env("a", 1)], t, memo, 0.0, out)
    assert [e.seq for e in out] == [1]
