"""The edge's fan-out reader (edge.sync.markers, issue 16), sans-IO: a marker equal to the
channel's delivered position is skipped without decoding it; every other one reaches the
tracker, so a lost tail is still found, by the first marker or by its repeat."""

from __future__ import annotations

from broker import wire
from broker.wire import Envelope
from edge.sync.markers import FrameFeeder
from edge.sync.tracker import RequestPosition, RequestReplay, State, Tracker


def _env(ch, seq, epoch="e1"):
    return wire.encode_envelope(Envelope(ch, seq, epoch, {"http-stream": {"content": f"{seq}"}}))


def _live(channel="a", epoch="e1", last_seq=0):
    t = Tracker()
    t.track(channel)
    t.on_position(channel, epoch, last_seq, [])
    t.take_actions()
    assert t.state(channel) is State.LIVE
    return t, FrameFeeder(t), []


def test_markers_at_the_delivered_position_are_skipped():
    t, f, out = _live()
    f.feed([_env("a", 1), _env("a", 2), wire.encode_marker("a", "e1", 2)], out)
    f.feed([wire.encode_marker("a", "e1", 2)], out)  # the broker's second round
    assert [e.seq for e in out] == [1, 2]
    assert t.position("a") == ("e1", 2) and t.take_actions() == []
    st = f.statistics()
    assert (st.frames, st.markers_current, st.markers_decoded) == (4, 2, 0)


def test_long_names_epochs_and_seqs_compare_exactly():
    ch, epoch = "ch-" + "é" * 40, "x" * 300
    t, f, out = _live(ch, epoch, 2**40)
    f.feed([wire.encode_marker(ch, epoch, 2**40)], out)
    assert f.statistics().markers_current == 1
    f.feed([wire.encode_marker(ch, epoch, 2**40 + 1)], out)  # one more than delivered
    assert f.statistics().markers_decoded == 1
    assert t.take_actions() == [RequestReplay(ch, epoch, 2**40)]


def test_lost_tail_found_by_the_first_marker():
    t, f, out = _live()
    f.feed([_env("a", 1), wire.encode_marker("a", "e1", 3)], out)  # 2 and 3 lost
    assert t.take_actions() == [RequestReplay("a", "e1", 1)]
    assert t.state("a") is State.REPLAYING


def test_lost_tail_found_by_the_repeat_when_the_first_marker_was_lost_too():
    t, f, out = _live()
    f.feed([_env("a", 1)], out)  # 2, 3 and the first marker lost
    f.feed([wire.encode_marker("a", "e1", 3)], out)
    assert t.take_actions() == [RequestReplay("a", "e1", 1)]


def test_markers_of_another_epoch_or_a_positioning_channel_reach_the_tracker():
    t, f, out = _live()
    f.feed([wire.encode_marker("a", "e2", 0)], out)  # another epoch: the position decides
    assert t.take_actions() == [RequestPosition("a")]
    t2 = Tracker()
    t2.track("b")  # positioning: the marker sets the position
    t2.take_actions()
    f2 = FrameFeeder(t2)
    f2.feed([wire.encode_marker("b", "e1", 4)], out)
    assert t2.state("b") is State.LIVE and t2.position("b") == ("e1", 4)
    f2.feed([wire.encode_marker("untracked", "e1", 4)], out)  # not ours: ignored by the tracker
    assert f2.statistics().markers_decoded == 2


def test_bad_frames_are_skipped():
    t, f, out = _live()
    f.feed([b"no separator", b"a\x00\xc1", b"\xff\x00\x83\xa6marker\xc3", _env("a", 1)], out)
    assert [e.seq for e in out] == [1]


def test_a_repeated_current_marker_is_one_set_lookup_and_tells_nothing_later():
    """The broker's second round repeats a marker's bytes: skipped by the remembered set.
    Remembered markers stay harmless: after the channel moved on, after a new epoch (from a
    position answer), and for a channel tracked again (its position answer decides)."""
    t, f, out = _live()
    m2 = wire.encode_marker("a", "e1", 2)
    f.feed([_env("a", 1), _env("a", 2), m2, m2], out)
    st = f.statistics()
    assert (st.markers_current, st.markers_repeated, st.markers_decoded) == (2, 1, 0)
    f.feed([_env("a", 3), m2], out)  # an old repeat after the channel moved on
    assert [e.seq for e in out] == [1, 2, 3] and t.take_actions() == []
    t.on_position("a", "e9", 0, out)  # the broker lost the history: a new epoch
    t.take_actions()
    f.feed([m2, _env("a", 1, "e9")], out)  # the stale marker: nothing asked, nothing lost
    assert t.position("a") == ("e9", 1) and t.take_actions() == []
    t.untrack("a")
    t.track("a")
    assert t.take_actions() == [RequestPosition("a", subscribed=True)]
    f.feed([m2], out)  # tracked again: the position answer, not a remembered marker, decides
    assert t.state("a") is State.POSITION
    t.on_position("a", "e9", 5, out)
    assert t.state("a") is State.LIVE and t.position("a") == ("e9", 5)


# -- trailing positions in the heartbeat (wire version 3) -------------------------------------


def _hb(n, marks=(), broker_id="b1"):
    return wire.encode_heartbeat(
        broker_id, 1.0, 2.0, n=n, marks=wire.encode_marks(marks) if marks else b""
    )


def test_heartbeat_positions_find_a_lost_tail_after_the_frames_before_them():
    """The heartbeat comes after the messages it counts: read in link order, a position at the
    delivered seq is skipped, one beyond it (the last message lost) asks a replay."""
    t, f, out = _live()
    t.track("b")
    t.on_position("b", "e1", 0, out)
    t.take_actions()
    f.feed([_env("a", 1), _env("b", 1), _hb(1, [("a", "e1", 1), ("b", "e1", 2)])], out)
    assert [(e.channel, e.seq) for e in out] == [("a", 1), ("b", 1)]
    assert t.take_actions() == [RequestReplay("b", "e1", 1)]  # b's seq 2 was lost
    st = f.statistics()
    assert (st.frames, st.heartbeats, st.marks, st.marks_current) == (2, 1, 2, 1)


def test_heartbeat_positions_of_other_channels_epochs_and_positioning_tracks():
    t, f, out = _live()
    t.track("p")  # positioning: the position sets it
    t.take_actions()
    f.feed([_hb(1, [("x", "e1", 7), ("a", "e2", 0), ("p", "e1", 4)])], out)
    assert t.take_actions() == [RequestPosition("a")]  # another epoch: the answer decides
    assert t.state("p") is State.LIVE and t.position("p") == ("e1", 4)
    assert f.statistics().marks_current == 1  # x: not tracked here


def test_a_lost_heartbeat_asks_every_position_once_per_gap_per_broker():
    """Positions are sent once: a gap in a broker's heartbeat counter means some were lost,
    so every tracked channel's position is asked (as after a broker restart)."""
    t, f, out = _live()
    f.feed([_hb(1), _hb(2), _hb(1, broker_id="b2"), _hb(3)], out)
    assert t.take_actions() == []  # counters in order, per broker
    f.feed([_hb(5)], out)  # 4 lost, with whatever it carried
    assert t.take_actions() == [RequestPosition("a")]
    f.feed([_hb(2, broker_id="b2"), _hb(1, broker_id="b3")], out)  # b3: first heard of
    assert t.take_actions() == []
    st = f.statistics()
    assert (st.heartbeats, st.heartbeats_missed, st.resyncs) == (7, 1, 1)


def test_bad_heartbeat_positions_resync():
    t, f, out = _live()
    bad = wire.encode_heartbeat("b1", 1.0, 2.0, n=1, marks=b"\x91\x93\xa1a\xa2e1\xff")
    f.feed([bad], out)
    assert t.take_actions() == [RequestPosition("a")]
    f.feed([wire.HEARTBEAT_TOPIC + b"\xc1"], out)  # not even a heartbeat: the link logs it
    assert t.take_actions() == [] and f.statistics().resyncs == 1


def test_heartbeat_positions_equal_marker_by_marker_tracking():
    """``Tracker.on_marks`` = ``on_marker`` for each (same deliveries, actions, positions)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(
        delivered=st.lists(st.integers(0, 5), min_size=3, max_size=3),
        marks=st.lists(
            st.tuples(st.sampled_from("abcz"), st.sampled_from(["e1", "e2"]), st.integers(0, 8)),
            max_size=8,
        ),
        positioning=st.booleans(),
    )
    def check(delivered, marks, positioning):
        trackers = []
        for _ in range(2):
            t = Tracker()
            for ch, seq in zip("abc", delivered, strict=True):
                t.track(ch)
                if not (positioning and ch == "c"):
                    t.on_position(ch, "e1", seq, [])
            t.take_actions()
            trackers.append(t)
        one, batch = trackers
        out1: list[Envelope] = []
        out2: list[Envelope] = []
        for ch, ep, seq in marks:
            one.on_marker(wire.Marker(ch, ep, seq), out1)
        batch.on_marks(marks, out2)
        assert out1 == out2
        assert one.take_actions() == batch.take_actions()
        for ch in "abc":
            assert (one.state(ch), one.position(ch)) == (batch.state(ch), batch.position(ch))

    check()
