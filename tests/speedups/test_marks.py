"""``held_marks`` (issue 16): a heartbeat's trailing positions, kept for the channels an edge
holds.  Both twins: the same result for every input, the same refusals (``RemoteProtocolError``
exactly where ``broker.wire.decode_marks`` refuses), and only the held channels not yet
delivered up to their position come back."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import _speedups
from broker import wire
from broker.errors import RemoteProtocolError
from edge.sync.tracker import State, Tracker
from tests.speedups.test_fanout import SETTINGS, _twins

LIVE = State.LIVE


class _T:
    """A track as ``held_marks`` reads it (``edge.sync.tracker._Track``'s three attributes)."""

    __slots__ = ("state", "epoch", "last_seq")

    def __init__(self, state, epoch, last_seq):
        self.state, self.epoch, self.last_seq = state, epoch, last_seq


def _outcome(mod, data, tracks):
    try:
        return ("ok", mod.held_marks(data, tracks, LIVE))
    except RemoteProtocolError:
        return ("refused",)


def _expected(data, tracks):
    """What ``held_marks`` must give, written from ``decode_marks`` and the track test."""
    try:
        marks = wire.decode_marks(data)
    except RemoteProtocolError:
        return ("refused",)
    keep = [
        m
        for m in marks
        if m[0] in tracks
        and not (
            tracks[m[0]].state is LIVE
            and m[1] == tracks[m[0]].epoch
            and m[2] <= tracks[m[0]].last_seq
        )
    ]
    return ("ok", (len(marks), keep))


def _agree(data, tracks):
    want = _expected(data, tracks)
    for mod in _twins("marks"):
        assert _outcome(mod, data, tracks) == want, mod.__name__


def test_both_twins_are_tested():
    mods = _twins("marks")
    assert mods[0].__name__.endswith("_py")
    if _speedups.COMPILED:
        assert [m.__name__.rsplit("_", 1)[1] for m in mods] == ["py", "c"]


# -- valid positions, random tracks ---------------------------------------------------------------

channel = st.one_of(
    st.sampled_from(["a", "b", "user-1", "é", "ü" * 40, "c" * 64, "c" * 65, "日本"]),
    st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s),
)
epoch = st.one_of(st.sampled_from(["e1", "e2", "", "é"]), st.text(max_size=4))
seq = st.one_of(st.integers(0, 300), st.sampled_from([2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]))
track = st.builds(
    _T,
    st.sampled_from([State.LIVE, State.POSITION, State.REPLAYING]),
    st.one_of(st.none(), epoch),
    st.one_of(seq, st.sampled_from([2**64, 2**70, -1])),
)


@SETTINGS
@given(
    marks=st.lists(st.tuples(channel, epoch, seq), max_size=40),
    tracks=st.dictionaries(channel, track, max_size=10),
)
def test_twins_agree_on_valid_positions(marks, tracks):
    _agree(wire.encode_marks(marks), tracks)
    # every track held at each position: the current test decides alone
    held = {ch: _T(LIVE, ep, s) for ch, ep, s in marks}
    _agree(wire.encode_marks(marks), held)


# -- hostile input --------------------------------------------------------------------------------

odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.sampled_from(["", "\x00", "a\x00b", "\x00a"]),
    st.binary(max_size=4),
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(-5, 5), max_size=2),
)
entry = st.one_of(
    st.tuples(channel, epoch, seq),
    st.tuples(channel, epoch, seq),
    st.tuples(odd, epoch, seq),
    st.tuples(channel, odd, seq),
    st.tuples(channel, epoch, odd),
    st.lists(st.one_of(channel, seq, odd), max_size=4),
    odd,
)


@SETTINGS
@given(
    entries=st.lists(entry, max_size=8),
    cut=st.integers(0, 400),
    tail=st.binary(max_size=3),
    tracks=st.dictionaries(channel, track, max_size=6),
)
def test_twins_agree_on_hostile_positions(entries, cut, tail, tracks):
    data = msgpack.packb(entries, use_bin_type=True)
    _agree(data, tracks)
    _agree(data[:cut], tracks)  # truncated
    _agree(data + tail, tracks)  # extra bytes
    if data:
        _agree(bytes([data[0] ^ 0x10]) + data[1:], tracks)  # another outer type


@SETTINGS
@given(data=st.binary(max_size=64), tracks=st.dictionaries(channel, track, max_size=3))
def test_twins_agree_on_random_bytes(data, tracks):
    _agree(data, tracks)
    _agree(b"\x91\x93" + data, tracks)


def _str8(b):
    return b"\xd9" + bytes([len(b)]) + b


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x90",  # no positions
        b"\xc0",  # nil
        b"\x80",  # a map
        b"\x91\x93\xa1a\xa2e1\x05",  # one position
        b"\x91\x93\xa1a\xa2e1\x05\x00",  # extra byte
        b"\x91\x93\xa0\xa2e1\x05",  # empty channel
        b"\x91\x93\xa2a\x00\xa2e1\x05",  # NUL in the channel
        b"\x91\x93\xa1a\xa2e\x00\x05",  # NUL in the epoch: allowed
        b"\x91\x93\xa1a\xa2e1\xff",  # negative fixint
        b"\x91\x93\xa1a\xa2e1\xd0\xff",  # int8 -1
        b"\x91\x93\xa1a\xa2e1\xd3\x80" + b"\x00" * 7,  # int64 min
        b"\x91\x93\xa1a\xa2e1\xd3\x00" + b"\x00" * 6 + b"\x07",  # int64 7
        b"\x91\x93\xa1a\xa2e1\xcf" + b"\xff" * 8,  # uint64 max
        b"\x91\x93\xa1a\xa2e1\xcf" + b"\xff" * 7,  # truncated uint64
        b"\x91\x93\xa1a\xa2e1\xc3",  # True
        b"\x91\x93\xa1a\xa2e1\xcb" + struct.pack(">d", 5.0),  # a float
        b"\x91\x93\xc4\x01a\xa2e1\x05",  # bin channel
        b"\x91\x93\xa1a\xc4\x02e1\x05",  # bin epoch
        b"\x91\x93\xa1\xff\xa2e1\x05",  # invalid UTF-8 channel
        b"\x91\x93\xa1a\xa2\xc3\x28\x05",  # invalid UTF-8 epoch
        b"\x91\x93\xa3\xed\xa0\x80\xa2e1\x05",  # a surrogate (refused by strict UTF-8)
        b"\x91\x93\xa2\xc0\xaf\xa2e1\x05",  # overlong
        b"\x91\x93\xa4\xf4\x90\x80\x80\xa2e1\x05",  # above U+10FFFF
        b"\x91\x93" + _str8(b"a") + b"\xda\x00\x02e1" + b"\xcc\x05",  # wide headers: valid
        b"\x91\xdc\x00\x03\xa1a\xa2e1\x05",  # array16 entry: valid
        b"\xdd\x00\x00\x00\x01\x93\xa1a\xa2e1\x05",  # array32 outer: valid
        b"\x91\x92\xa1a\xa2e1",  # entry of 2
        b"\x91\x94\xa1a\xa2e1\x05\x05",  # entry of 4
        b"\x92\x93\xa1a\xa2e1\x05",  # one entry missing
        b"\xdd\xff\xff\xff\xff\x93\xa1a\xa2e1\x05",  # a huge array header
        b"\xdc\xff\xff" + b"\x93\xa1a\xa2e1\x05" * 3,
        b"\x91\x93\xdb\xff\xff\xff\xff\xa2e1\x05",  # a huge str header
        b"\x91\x93\xa5ab",  # truncated str
        b"\x91\xc1",  # never used
        b"\x91\x93\xa1a\xa2e1\xd4\x00\x00",  # an ext
    ],
)
def test_twins_agree_on_edge_cases(data):
    for tracks in ({}, {"a": _T(LIVE, "e1", 0)}, {"a": _T(LIVE, "e1", 2**64)}):
        _agree(data, tracks)


def test_huge_position_array_is_read_once():
    marks = [(f"user-{i}", "0123456789abcdef", i) for i in range(50_000)]
    held = {f"user-{i}": _T(LIVE, "0123456789abcdef", i) for i in range(0, 50_000, 2)}
    held["user-7"] = _T(LIVE, "0123456789abcdef", 6)  # behind its position
    data = wire.encode_marks(marks)
    for mod in _twins("marks"):
        assert mod.held_marks(data, held, LIVE) == (50_000, [("user-7", "0123456789abcdef", 7)])
        with pytest.raises(RemoteProtocolError):
            mod.held_marks(data[:-1], held, LIVE)
        with pytest.raises(RemoteProtocolError):  # one bad entry at the very end refuses all
            mod.held_marks(wire.encode_marks([*marks, ("x", "e", -1)]), held, LIVE)


class _Plain:
    """A track without slots (its attributes in ``__dict__``): read with getattr."""

    def __init__(self, state, epoch, last_seq):
        self.state, self.epoch, self.last_seq = state, epoch, last_seq


class _Computed(_T):
    """A track whose ``last_seq`` is computed: no longer a plain slot."""

    __slots__ = ()

    def __init__(self, state, epoch, last_seq):
        self.state, self.epoch = state, epoch

    @property  # type: ignore[override]
    def last_seq(self):
        return 4


@pytest.mark.parametrize("cls", [_T, _Plain, _Computed])
def test_any_track_type_is_read_as_python_reads_it(cls):
    marks = [("a", "e1", 4), ("b", "e1", 5), ("c", "e2", 1), ("d" * 70, "e1", 4)]
    data = wire.encode_marks(marks)
    tracker = Tracker()
    tracker.track("a")
    tracker.on_position("a", "e1", 3, [])
    for tracks in (
        {ch: cls(LIVE, ep, s) for ch, ep, s in marks},
        {ch: cls(LIVE, ep, 4) for ch, ep, _ in marks},
        {ch: cls(State.REPLAYING, ep, s) for ch, ep, s in marks},
        {ch: cls(LIVE, None, s) for ch, _, s in marks},
    ):
        _agree(data, tracks)
        # the tracker's own tracks in between: the cached slot offsets follow the type
        _agree(data, tracker._tracks)


# -- only the held channels -----------------------------------------------------------------------


def test_unheld_channels_are_skipped():
    marks = [("a", "e1", 3), ("b", "e1", 3), ("c", "e1", 3), ("d", "e2", 9), ("e", "e1", 1)]
    data = wire.encode_marks(marks)
    tracks = {
        "a": _T(LIVE, "e1", 3),  # delivered up to it: skipped
        "c": _T(LIVE, "e1", 2),  # behind: kept (a lost tail)
        "d": _T(LIVE, "e1", 50),  # another epoch: kept
        "e": _T(State.POSITION, None, 0),  # not positioned yet: kept
        "z": _T(LIVE, "e1", 0),  # held, not in this heartbeat
    }
    for mod in _twins("marks"):
        count, kept = mod.held_marks(data, tracks, LIVE)
        assert count == 5
        assert kept == [("c", "e1", 3), ("d", "e2", 9), ("e", "e1", 1)]  # "b": not held
        assert mod.held_marks(data, {}, LIVE) == (5, [])


def test_tracker_reads_packed_positions_for_its_channels_only():
    """``Tracker.on_packed_marks``: unheld channels change nothing; a held channel behind its
    position asks a replay (the tail guarantee); a bad entry applies nothing."""
    t = Tracker()
    for ch in ("a", "c"):
        t.track(ch)
        t.on_position(ch, "e1", 2, [])
    t.take_actions()
    out: list[wire.Envelope] = []
    data = wire.encode_marks([("a", "e1", 2), ("b", "e1", 7), ("c", "e1", 4), ("x", "e9", 1)])
    assert t.on_packed_marks(data, out) == (4, 3)
    actions = t.take_actions()
    assert [(type(a).__name__, a.channel) for a in actions] == [("RequestReplay", "c")]
    assert t.on_packed_marks(wire.encode_marks([("b", "e1", 9)]), out) == (1, 1)
    assert not t.take_actions() and not out
    with pytest.raises(RemoteProtocolError):
        t.on_packed_marks(wire.encode_marks([("a", "e1", 9), ("b", "e1", -1)]), out)
    assert not t.take_actions()
    assert t.position("a") == ("e1", 2)
