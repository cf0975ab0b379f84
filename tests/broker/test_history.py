"""broker.history (memory store): sequencing, bounds, replay semantics; broker.store adapter."""

from __future__ import annotations

import itertools

import pytest
import trio

from broker.history import MemoryHistory, Position
from broker.items import Item
from broker.store.memory import MemoryStore

F = {"http-stream": {"action": "send", "content": b"x"}}


def epochs():
    counter = itertools.count(1)
    return lambda: f"e{next(counter)}"


def make(**kw) -> MemoryHistory:
    kw.setdefault("new_epoch", epochs())
    return MemoryHistory(**kw)


def item(id=None, channel="c", prev=None) -> Item:
    return Item(channel, F, id, prev, {"k": "v"}, False)


def fill(h: MemoryHistory, n: int, channel="c", now=0.0, ids=True):
    return [h.append(item(f"i{k}" if ids else None, channel), now) for k in range(1, n + 1)]


def seqs(rep):
    return [e.seq for e in rep.items]


def test_append_sequences_per_channel():
    h = make()
    a1 = h.append(item("x", "a", prev="w"), 10.0)
    b1 = h.append(item(None, "b"), 11.0)
    a2 = h.append(item(None, "a"), 12.0)
    assert (a1.seq, a1.epoch, a1.id, a1.prev_id, a1.ts, a1.meta) == (
        1,
        "e1",
        "x",
        "w",
        10.0,
        {"k": "v"},
    )
    assert (b1.seq, b1.epoch) == (1, "e2")
    assert (a2.seq, a2.epoch, a2.cursor) == (2, "e1", "e1:2")
    assert h.position("a") == Position("e1", 2, None)


def test_position_of_unknown_channel_creates_epoch_lazily():
    h = make()
    assert h.position("new") == ("e1", 0, None)
    assert h.position("new") == ("e1", 0, None)
    assert h.append(item("a", "new"), 0).epoch == "e1"
    assert h.position("new") == ("e1", 1, "a")


def test_count_bound():
    h = make(max_items=3)
    fill(h, 5)
    rep = h.replay("c", "e1", 0)
    assert (rep.complete, seqs(rep), rep.last_seq) == (False, [3, 4, 5], 5)
    assert h.statistics().retained == 3
    rep = h.replay("c", "e1", 2)
    assert (rep.complete, seqs(rep)) == (True, [3, 4, 5])


def test_age_bound():
    h = make(max_age_s=10)
    h.append(item("a"), 0.0)
    h.append(item("b"), 5.0)
    h.append(item("c"), 12.0)  # expires "a" (older than 12 - 10)
    assert seqs(h.replay("c", "e1", 0)) == [2, 3]
    rep = h.replay("c", "e1", 1, now=16.0)  # now "b" is too old as well
    assert (rep.complete, seqs(rep)) == (False, [3])
    assert h.statistics().expired == 2


def test_channel_bound_evicts_least_recently_written():
    h = make(max_channels=2)
    h.append(item(None, "a"), 0)
    h.append(item(None, "b"), 0)
    h.append(item(None, "a"), 0)
    h.append(item(None, "c"), 0)  # evicts b
    assert h.statistics().channels == 2 and h.statistics().evicted_channels == 1
    assert h.position("a").last_seq == 2
    assert h.position("b") == ("e4", 0, None)  # a new epoch: history before is gone


@pytest.mark.parametrize(
    "kw,complete,expected",
    [
        (dict(epoch="e1", after_seq=0), True, [1, 2, 3, 4, 5]),
        (dict(epoch="e1", after_seq=3), True, [4, 5]),
        (dict(epoch="e1", after_seq=5), True, []),
        (dict(epoch="e1", after_seq=6), False, [1, 2, 3, 4, 5]),  # beyond last_seq
        (dict(epoch="other", after_seq=3), False, [1, 2, 3, 4, 5]),
        (dict(epoch=None, after_seq=3), True, [4, 5]),
        (dict(), True, [1, 2, 3, 4, 5]),
        (dict(after_id="i2"), True, [3, 4, 5]),
        (dict(after_id="i5"), True, []),
        (dict(after_id="e1:4"), True, [5]),
        (dict(after_id="e1:9"), False, [1, 2, 3, 4, 5]),
        (dict(after_id="zz:2"), False, [1, 2, 3, 4, 5]),
        (dict(after_id="unknown"), False, [1, 2, 3, 4, 5]),
        (dict(after_id="unknown", epoch="e1", after_seq=4), True, [5]),  # falls back to after_seq
        (dict(epoch="e1", after_seq=1, limit=2), True, [2, 3]),
        (dict(epoch="other", limit=2), False, [1, 2]),
        (dict(epoch="e1", after_seq=0, limit=0), True, []),
    ],
)
def test_replay_semantics(kw, complete, expected):
    h = make()
    fill(h, 5)
    kw.setdefault("epoch", None)
    rep = h.replay("c", **kw)
    assert (rep.epoch, rep.last_seq, rep.complete, seqs(rep)) == ("e1", 5, complete, expected)


def test_replay_gap_older_than_retained_is_incomplete():
    h = make(max_items=2)
    fill(h, 5)
    rep = h.replay("c", after_id="i2")  # i2 was trimmed: unknown now
    assert (rep.complete, seqs(rep)) == (False, [4, 5])
    rep = h.replay("c", "e1", 2)  # 3 is missing
    assert (rep.complete, seqs(rep)) == (False, [4, 5])
    rep = h.replay("c", "e1", 3)
    assert (rep.complete, seqs(rep)) == (True, [4, 5])


def test_replay_last_id_resolves_even_when_ring_expired():
    h = make(max_age_s=1)
    fill(h, 3)
    rep = h.replay("c", after_id="i3", now=100)
    assert (rep.complete, rep.items, rep.last_seq) == (True, [], 3)


def test_repeated_publisher_id_points_to_latest():
    h = make()
    h.append(item("dup"), 0)
    h.append(item("other"), 0)
    h.append(item("dup"), 0)
    assert seqs(h.replay("c", after_id="dup")) == []


def test_replay_unknown_channel():
    h = make()
    rep = h.replay("nobody", "stale-epoch", 3)
    assert (rep.epoch, rep.last_seq, rep.complete, rep.items) == ("e1", 0, False, [])
    rep = h.replay("nobody", "e1", 0)
    assert (rep.complete, rep.items) == (True, [])


def test_limit_is_capped():
    h = make(max_items=2000)
    fill(h, 1500, ids=False)
    assert len(h.replay("c", "e1", 0, limit=5000).items) == 1000


def test_bounds_validated():
    with pytest.raises(ValueError):
        MemoryHistory(max_items=0)


def test_memory_store_adapter():
    store = MemoryStore(make())

    async def go():
        envs = await store.append_batch([item("a"), item("b")], 1.0)
        assert [e.seq for e in envs] == [1, 2]
        assert await store.position("c") == ("e1", 2, "b")
        rep = await store.replay("c", "e1", 1, None, 10, 2.0)
        assert rep.complete and seqs(rep) == [2]
        await store.aclose()

    trio.run(go)
    assert store.statistics().appended == 2
