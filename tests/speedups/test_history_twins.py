"""Both ``_history`` twins: ``append_many`` leaves a ``MemoryHistory`` exactly as ``append``
item by item does (sequence, ring, ids, byte, count, age and channel bounds, counters), and the
compiled channel holds its numbers as C fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import broker.history as history_mod
from broker.history import MemoryHistory
from broker.items import Item
from broker.wire import Envelope
from tests.speedups.test_fanout import SETTINGS, _twins

_item = st.tuples(
    st.sampled_from(["a", "b", "c", "d"]),
    st.one_of(st.none(), st.sampled_from(["x", "y", "z"])),
    st.integers(0, 40),  # payload bytes
    st.one_of(st.none(), st.sampled_from(["x", "y"])),  # prev_id
)


def _history(mod, monkeypatch, **kw) -> MemoryHistory:
    monkeypatch.setattr(history_mod, "_Channel", mod.HistoryChannel)
    epochs = iter(range(10**6))
    return MemoryHistory(new_epoch=lambda: f"e{next(epochs)}", **kw)


def _state(h: MemoryHistory) -> list:
    return [
        (name, ch.epoch, ch.last_seq, ch.last_id, list(ch.ring), dict(ch.ids), ch.bytes)
        for name, ch in h._channels.items()
    ] + [h.statistics(), h.estimated_bytes()]


def _items(batch) -> list[Item]:
    return [
        Item(channel=ch, formats={"http-stream": {"content": "p" * size}}, id=i, prev_id=p)
        for ch, i, size, p in batch
    ]


_bounds = dict(
    batches=st.lists(st.lists(_item, max_size=14), max_size=6),
    max_items=st.integers(1, 6),
    max_channels=st.integers(1, 3),
    max_bytes=st.sampled_from([0, 1, 30, 100]),
    step=st.sampled_from([0.0, 3.0, 11.0]),
)


@pytest.mark.parametrize("mod", _twins("history"), ids=lambda m: m.__name__)
@SETTINGS
@given(**_bounds)
def test_append_many_equals_append_one_by_one(
    mod, batches, max_items, max_channels, max_bytes, step
):
    """Without the all-channels bound (checked once a batch by ``append_many``, once an item
    by ``append``), a batch leaves the history as its items appended one by one."""
    mp = pytest.MonkeyPatch()
    try:
        kw = dict(
            max_items=max_items, max_age_s=10.0, max_channels=max_channels, max_bytes=max_bytes
        )
        one = _history(mod, mp, **kw)
        many = _history(mod, mp, **kw)
        for n, batch in enumerate(batches):
            now = 1000.0 + n * step
            items = _items(batch)
            got = mod.append_many(many, items, now, Envelope)
            assert got == [one.append(item, now) for item in items]
            assert _state(many) == _state(one)
    finally:
        mp.undo()


@SETTINGS
@given(**_bounds, max_total_bytes=st.sampled_from([0, 2000, 5000]))
def test_twins_agree_with_every_bound(
    batches, max_items, max_channels, max_bytes, step, max_total_bytes
):
    mods = _twins("history")
    if len(mods) < 2:
        pytest.skip("compiled twins are not built")
    mp = pytest.MonkeyPatch()
    try:
        kw = dict(
            max_items=max_items,
            max_age_s=10.0,
            max_channels=max_channels,
            max_bytes=max_bytes,
            max_total_bytes=max_total_bytes,
        )
        pure = _history(mods[0], mp, **kw)
        comp = _history(mods[1], mp, **kw)
        for n, batch in enumerate(batches):
            now = 1000.0 + n * step
            items = _items(batch)
            mp.setattr(history_mod, "_Channel", mods[0].HistoryChannel)
            want = mods[0].append_many(pure, items, now, Envelope)
            mp.setattr(history_mod, "_Channel", mods[1].HistoryChannel)
            assert mods[1].append_many(comp, items, now, Envelope) == want
            assert _state(comp) == _state(pure)
    finally:
        mp.undo()


@pytest.mark.parametrize("mod", _twins("history"), ids=lambda m: m.__name__)
def test_channel_fields_and_drop_oldest(mod):
    ch = mod.HistoryChannel("c", "e1", 5, 60.0)
    assert (ch.name, ch.epoch, ch.last_seq, ch.last_id, ch.bytes) == ("c", "e1", 0, None, 0)
    assert (ch.max_items, ch.max_age_s, list(ch.ring), ch.ids) == (5, 60.0, [], {})
    env = Envelope("c", 1, "e1", {"http-stream": {"content": "abc"}}, "i1", None, {}, 1.0)
    ch.ring.append(env)
    ch.ids["i1"] = 1
    ch.bytes = 3
    assert ch.drop_oldest() == 3
    assert (list(ch.ring), ch.ids, ch.bytes) == ([], {}, 0)


def test_compiled_channel_numbers_are_c_fields():
    mods = [m for m in _twins("history") if m.__name__.endswith("_c")]
    if not mods:
        pytest.skip("compiled twins are not built")
    ch = mods[0].HistoryChannel("c", "e1", 5, 60.0)
    with pytest.raises(TypeError):
        ch.last_seq = "7"  # a C long long, not any object
    with pytest.raises(AttributeError):
        ch.other = 1  # no instance dict: nothing else hangs off a channel
