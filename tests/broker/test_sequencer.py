"""broker.sequencer: Pushpin's dedupe and reorder semantics, driven with explicit ``now``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.items import Item
from broker.sequencer import Sequencer

F = {"http-stream": {"action": "send", "content": b""}}


def it(id=None, prev=None, channel="c", no_seq=False) -> Item:
    return Item(channel, F, id, prev, {}, no_seq)


def ids(items):
    return [i.id for i in items]


def test_pushpin_observed_sequence():
    # reference 5.1 OBS: A, C(prev b), B(prev a), A again, E(prev d) -> A B C now, E after ~5 s
    s = Sequencer()
    out = []
    out += s.add(it("a"), 0.0)
    out += s.add(it("c", "b"), 0.1)
    out += s.add(it("b", "a"), 0.2)
    out += s.add(it("a"), 0.3)
    out += s.add(it("e", "d"), 0.4)
    assert ids(out) == ["a", "b", "c"]
    assert s.next_deadline() == 5.4
    assert s.poll(5.3) == []
    assert ids(s.poll(5.4)) == ["e"]
    st_ = s.statistics()
    assert (st_.dropped_duplicate, st_.timed_out, st_.pending, st_.released) == (1, 1, 0, 4)


def test_first_item_of_a_channel_is_released_at_once():
    s = Sequencer()
    assert ids(s.add(it("z", "y"), 0)) == ["z"]


def test_channels_are_independent():
    s = Sequencer()
    s.add(it("a", channel="x"), 0)
    s.add(it("a", channel="y"), 0)  # same id, other channel: not a duplicate
    assert ids(s.add(it("c", "b", channel="x"), 0)) == []
    assert ids(s.add(it("b", "a", channel="y"), 0)) == ["b"]
    assert ids(s.add(it("b", "a", channel="x"), 0)) == ["b", "c"]


def test_dedupe_window():
    s = Sequencer(id_cache_ttl_s=60)
    assert ids(s.add(it("a"), 0)) == ["a"]
    assert s.add(it("a"), 59.9) == []
    assert ids(s.add(it("a"), 60.0)) == ["a"]


def test_dedupe_off():
    s = Sequencer(id_cache_ttl_s=0)
    assert ids(s.add(it("a"), 0) + s.add(it("a"), 1)) == ["a", "a"]


def test_item_without_id_forgets_last_id():
    s = Sequencer()
    s.add(it("a"), 0)
    s.add(it(None), 0)
    assert ids(s.add(it("c", "b"), 0)) == ["c"]  # nothing remembered: released
    assert s.last_id("c") == "c"


def test_no_seq_bypasses_and_keeps_last_id():
    s = Sequencer()
    s.add(it("a"), 0)
    assert ids(s.add(it("x", "zzz", no_seq=True), 0)) == ["x"]
    assert s.last_id("c") == "a"
    assert s.add(it("x"), 0) == []  # still deduped


def test_second_item_on_same_prev_id_is_dropped():
    s = Sequencer()
    s.add(it("a"), 0)
    s.add(it("c", "b"), 0)
    assert s.add(it("c2", "b"), 0) == []
    assert s.statistics().dropped_conflict == 1
    assert ids(s.add(it("b", "a"), 0)) == ["b", "c"]


def test_pending_cap():
    s = Sequencer(pending_max=3)
    s.add(it("a"), 0)
    for n in range(4):
        s.add(it(f"x{n}", f"p{n}"), 0)
    st_ = s.statistics()
    assert (st_.pending, st_.dropped_overflow) == (3, 1)


def test_timed_out_item_releases_its_chain():
    s = Sequencer(message_wait_s=5)
    s.add(it("a"), 0)
    s.add(it("c", "b"), 1)
    s.add(it("d", "c"), 2)
    assert ids(s.poll(6)) == ["c", "d"]
    assert s.next_deadline() is None


def test_forget_ids_allows_a_retry():
    s = Sequencer()
    batch = s.add(it("a"), 0)
    s.forget_ids(batch)
    assert ids(s.add(it("a"), 1)) == ["a"]
    assert ids(s.add(it("b"), 61)) == ["b"]  # the stale expiry entry is skipped safely
    assert s.statistics().ids_cached == 1


def test_recover_forgets_last_ids():
    s = Sequencer()
    s.add(it("a"), 0)
    s.recover()
    assert ids(s.add(it("c", "b"), 0)) == ["c"]


def test_last_ids_lru_bound():
    s = Sequencer(last_ids_max=2)
    for ch in ("x", "y", "z"):
        s.add(it("a", channel=ch), 0)
    assert s.last_id("x") is None and s.last_id("z") == "a"


def test_id_cache_bound():
    s = Sequencer(id_cache_max=2)
    for n in range(3):
        s.add(it(str(n)), 0)
    assert s.statistics().ids_cached == 2
    assert ids(s.add(it("0"), 0)) == ["0"]  # evicted: no longer a duplicate


def test_id_cache_generations_keep_the_exact_window():
    # the young generation turns old 60 s after the first id; the window stays exact across it
    s = Sequencer(id_cache_ttl_s=60)
    s.add(it("a"), 0)
    s.add(it("b"), 50)
    assert s.add(it("a"), 59.9) == [] and s.add(it("b"), 59.9) == []
    assert ids(s.add(it("a"), 60)) == ["a"]  # turned old at 60, expired at 60
    assert s.add(it("b"), 109.9) == []  # in the old generation, 0.1 s left
    assert ids(s.add(it("b"), 110)) == ["b"]
    assert s.add(it("a"), 119.9) == []  # the "a" of 60, young then
    assert s.statistics().ids_cached <= 3


def test_id_cache_bound_keeps_the_most_recent_half():
    s = Sequencer(id_cache_max=10)
    for n in range(100):
        assert ids(s.add(it(str(n)), 1)) == [str(n)]
        assert s.statistics().ids_cached <= 10
        for recent in range(max(0, n - 4), n + 1):  # the 5 (10 / 2) most recent are still seen
            assert s.add(it(str(recent)), 1) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.sampled_from(["x", "y"]), st.floats(0, 40)),
        max_size=60,
    ),
    st.sampled_from([1.0, 10.0, 60.0]),
)
def test_id_cache_equals_the_exact_window_under_its_bound(events, ttl):
    # the model: an id is a duplicate exactly within ttl of the time it was accepted
    s = Sequencer(id_cache_ttl_s=ttl)
    accepted: dict[tuple[str, str], float] = {}
    now = 0.0
    for item_id, channel, dt in events:
        now += dt
        key = (channel, item_id)
        duplicate = key in accepted and now < accepted[key] + ttl
        assert ids(s.add(it(item_id, channel=channel), now)) == ([] if duplicate else [item_id])
        if not duplicate:
            accepted[key] = now


# -- properties -----------------------------------------------------------------------------------


@st.composite
def shuffled_chain(draw):
    """A chain c0 <- c1 <- ... of < pending_max items, c0 first, the rest shuffled, some repeated,
    all arriving inside the reorder window and the dedupe window."""
    n = draw(st.integers(min_value=1, max_value=60))
    rest = list(range(1, n))
    order = [0] + draw(st.permutations(rest))
    dups = draw(st.lists(st.sampled_from(range(n)), max_size=10))
    for d in dups:
        pos = draw(st.integers(min_value=order.index(d) + 1, max_value=len(order)))
        order.insert(pos, d)
    times = sorted(draw(st.lists(st.floats(0, 4.9), min_size=len(order), max_size=len(order))))
    return n, order, times


@settings(max_examples=200, deadline=None)
@given(shuffled_chain())
def test_chain_in_window_is_exact(case):
    """Never out of order, never duplicated, nothing lost inside the window."""
    n, order, times = case
    s = Sequencer()
    out = []
    for k, t in zip(order, times):
        out += s.add(it(f"m{k}", f"m{k - 1}" if k else None), t)
    out += s.poll(100)
    assert ids(out) == [f"m{k}" for k in range(n)]


@st.composite
def arbitrary_ops(draw):
    ops = []
    t = 0.0
    for _ in range(draw(st.integers(0, 80))):
        t += draw(st.sampled_from([0.0, 0.1, 1.0, 3.0, 7.0]))
        if draw(st.booleans()):
            ops.append(("poll", t, None))
        else:
            ch = draw(st.sampled_from(["x", "y"]))
            i = draw(st.one_of(st.none(), st.integers(0, 15).map(str)))
            p = draw(st.one_of(st.none(), st.integers(0, 15).map(str)))
            ops.append(("add", t, it(i, p, ch, draw(st.booleans()))))
    return ops


@settings(max_examples=200, deadline=None)
@given(arbitrary_ops())
def test_arbitrary_input_invariants(ops):
    """Whatever arrives: no item is released twice, no (channel, id) is released twice inside
    the dedupe window, and everything accepted is released by the end."""
    s = Sequencer(pending_max=5)
    released = []
    for op, t, item in ops:
        released += s.poll(t) if op == "poll" else s.add(item, t)
    released += s.poll(1e9)
    assert len({id(i) for i in released}) == len(released)
    seen: dict = {}
    for item in released:
        if item.id is not None:
            seen[(item.channel, item.id)] = seen.get((item.channel, item.id), 0) + 1
    stats = s.statistics()
    offered = sum(1 for op, _, _ in ops if op == "add")
    assert stats.pending == 0
    assert len(released) == offered - stats.dropped_duplicate - stats.dropped_conflict - (
        stats.dropped_overflow
    )
    # ids repeat only when the window passed between them (arrivals here span < 60 s x ...)
    span = ops[-1][1] if ops else 0
    if span < 60:
        assert all(v == 1 for v in seen.values())


def test_configure_applies_reloaded_settings():
    # message_wait_s / id_cache_ttl_s from Config (Pushpin's message_wait, id_cache_ttl)
    s = Sequencer(message_wait_s=5.0, id_cache_ttl_s=60.0)
    s.add(it("a"), 0.0)
    assert s.add(it("c", "b"), 0.0) == []
    s.configure(id_cache_ttl_s=0.0, message_wait_s=1.0)
    assert s.next_deadline() == 1.0 and ids(s.poll(1.0)) == ["c"]
    assert ids(s.add(it("x"), 2.0)) == ["x"]
    assert ids(s.add(it("x"), 2.1)) == ["x"]  # no de-duplication any more
