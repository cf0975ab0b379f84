"""edge.grip.nextlink (update limiter, share key) and edge.grip.nextlink_track (Pushpin's
prev-id check): sans-IO, time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.wire import Envelope
from edge.grip.nextlink import LinkTarget, UpdateLimiter, share_key
from edge.grip.nextlink_track import QUEUE_MAX, PrevIds, Verdict


def item(channel: str, id_: str | None, prev: str | None, seq: int = 0) -> Envelope:
    return Envelope(channel, seq, "e", {"http-stream": {"content": b"x"}}, id=id_, prev_id=prev)


# -- the update limiter ------------------------------------------------------------------------


def test_limiter_waits_one_interval_then_one_action_per_interval():
    lim: UpdateLimiter[int] = UpdateLimiter(rate_per_s=10, per_action=100)
    for s in range(250):
        lim.add("http://o/next", s, now=0.0)
    assert lim.next_due() == pytest.approx(0.1)  # batch wait
    assert lim.pop_due(0.05) == []
    released = [lim.pop_due(lim.next_due() or 0) for _ in range(3)]
    assert [len(r) for r in released] == [100, 100, 50]
    assert sorted(x for r in released for x in r) == list(range(250))
    assert lim.next_due() is None
    assert lim.statistics().released == 250


def test_limiter_takes_keys_in_turn_and_skips_emptied_actions():
    lim: UpdateLimiter[str] = UpdateLimiter(rate_per_s=10, per_action=2)
    for s in ("a1", "a2", "a3", "a4"):
        lim.add("A", s, 0.0)
    lim.add("B", "b1", 0.0)
    lim.add("A", "a1", 0.0)  # already queued: no-op
    assert lim.discard("a3") and lim.discard("a4")  # A's second action is now empty
    assert sorted(lim.pop_due(0.1)) == ["a1", "a2"]
    assert lim.pop_due(lim.next_due() or 0) == ["b1"]
    assert lim.pop_due(lim.next_due() or 0) == []  # the empty action is skipped, not counted
    assert lim.next_due() is None


def test_limiter_a_recover_of_10000_streams_releases_100_every_100ms():
    lim: UpdateLimiter[int] = UpdateLimiter()
    for s in range(10_000):
        lim.add("http://o/next", s, 0.0)
    t, batches = 0.0, []
    while (due := lim.next_due()) is not None:
        t = due
        batches.append(len(lim.pop_due(t)))
    assert batches == [100] * 100 and t == pytest.approx(10.0)


def test_share_key_ignores_the_query_and_the_grip_last_order():
    where = LinkTarget(b"/next?client=1", True, ())
    other = LinkTarget(b"/next?client=2", True, ())
    a = share_key(1, where, [(b"Grip-Last", b"a; last-id=1"), (b"Grip-Last", b"b; last-id=2")])
    b = share_key(1, other, [(b"Grip-Last", b"b; last-id=2"), (b"Grip-Last", b"a; last-id=1")])
    assert a == b
    assert a != share_key(1, where, [(b"Grip-Last", b"a; last-id=9")])
    assert a != share_key(
        2, where, [(b"Grip-Last", b"a; last-id=1"), (b"Grip-Last", b"b; last-id=2")]
    )


# -- Pushpin's prev-id check -------------------------------------------------------------------


def test_items_that_follow_are_delivered_and_advance_the_last_id():
    t = PrevIds({"ch": "1"}, strict=["ch"])
    assert t.admit(item("ch", "2", "1")) is Verdict.DELIVER
    assert t.admit(item("ch", "3", "2")) is Verdict.DELIVER
    assert t.grip_last() == {"ch": "3"}


def test_a_gap_holds_what_follows_and_the_next_link_answer_filters_it():
    """The issue's scenario: prev-id=1, item 3 (prev 2) -> fetch with last-id=1; the next
    link gives 2 and 3 and prev-id=3; item 4 published meanwhile goes out after them."""
    t = PrevIds({"ch": "1"}, strict=["ch"])
    assert t.admit(item("ch", "3", "2")) is Verdict.GAP
    assert t.gap and t.grip_last() == {"ch": "1"}  # Grip-Last: ch; last-id=1
    assert t.admit(item("ch", "4", "3")) is Verdict.HELD
    rest = t.after_update({"ch": "3"}, {"ch"})
    assert [e.id for e in rest] == ["4"]
    assert [t.admit(e) for e in rest] == [Verdict.DELIVER]
    assert t.grip_last() == {"ch": "4"} and not t.gap


def test_after_update_drops_only_the_non_following_head():
    t = PrevIds({"ch": "1"}, strict=["ch"])
    t.admit(item("ch", "3", "2"))  # gap
    for e in [
        item("gone", "g", None),
        item("ch", "3", "2"),
        item("ch", "4", "3"),
        item("ch", "9", "8"),
    ]:
        t.admit(e)
    rest = t.after_update({"ch": "3"}, {"ch"})
    assert [e.id for e in rest] == ["4", "9"]  # 9 is checked again when delivered: a new gap
    assert t.admit(rest[0]) is Verdict.DELIVER and t.admit(rest[1]) is Verdict.GAP
    assert t.dropped == 2


def test_queue_is_bounded_like_pushpins_and_a_long_poll_drops():
    t = PrevIds({"ch": "1"}, strict=["ch"])
    t.admit(item("ch", "3", "2"))
    verdicts = [t.admit(item("ch", str(i), str(i - 1))) for i in range(4, 4 + QUEUE_MAX + 5)]
    assert verdicts.count(Verdict.HELD) == QUEUE_MAX and verdicts.count(Verdict.DROP) == 5
    poll = PrevIds({"ch": "1"}, strict=["ch"], queue=False)
    assert poll.admit(item("ch", "3", "2")) is Verdict.GAP
    assert poll.admit(item("ch", "2", "1")) is Verdict.DROP


def test_strict_and_lenient_channels():
    # not held by history: Pushpin's rule, an item without prev-id is a gap too
    strict = PrevIds({"ch": "1"}, strict=["ch"])
    assert strict.admit(item("ch", "2", None)) is Verdict.GAP
    # held by history: the broker's order vouches for an item without prev-id
    lenient = PrevIds({"ch": "1"})
    assert lenient.admit(item("ch", "2", None)) is Verdict.DELIVER
    assert lenient.admit(item("ch", "4", "3")) is Verdict.GAP


def test_an_item_without_id_ends_the_check_and_untracked_channels_pass():
    t = PrevIds({"ch": "1", "free": None}, strict=["ch"])
    assert t.admit(item("free", "x", "whatever")) is Verdict.DELIVER
    assert t.admit(item("ch", None, "1")) is Verdict.DELIVER
    assert t.admit(item("ch", "z", "anything")) is Verdict.DELIVER  # no last id any more
    assert t.idle and t.grip_last() == {}


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 30),
    lost=st.sets(st.integers(1, 30)),
    cut=st.integers(0, 30),
    answered=st.integers(0, 30),
)
def test_origin_fallback_never_loses_or_duplicates(n, lost, cut, answered):
    """A publisher chain 1..n (each item's prev-id the one before); the session starts after
    ``cut``; the items in ``lost`` never reach the edge.  Each gap asks the origin, which
    answers with every item after the last id it is given up to ``answered`` (what it had
    stored when asked), and its prev-id; the client gets each item exactly once, in order,
    up to the last one that reached the edge or the origin."""
    cut = min(cut, n)
    t = PrevIds({"ch": str(cut)}, strict=["ch"])
    got: list[int] = []
    live = [i for i in range(cut + 1, n + 1) if i not in lost]

    def origin_answer(seen: int) -> None:
        # the origin has stored at least everything the edge has seen (publish after store)
        last = int(t.grip_last()["ch"])
        upto = max(min(answered, n), last, seen)
        got.extend(range(last + 1, upto + 1))
        for e in t.after_update({"ch": str(upto)}, {"ch"}):
            deliver(e)

    def deliver(e: Envelope) -> None:
        v = t.admit(e)
        if v is Verdict.DELIVER:
            got.append(int(e.id or 0))
        elif v is Verdict.GAP:
            pending.append(True)

    pending: list[bool] = []
    for i in live:
        deliver(item("ch", str(i), str(i - 1)))
        while pending:
            pending.clear()
            origin_answer(i)
            answered = n  # later answers know everything published so far
    assert got == sorted(set(got)), "duplicated or out of order"
    assert got == list(range(cut + 1, (got[-1] if got else cut) + 1)), "a gap was delivered"
    if live and live[-1] == n:
        assert got and got[-1] == n
