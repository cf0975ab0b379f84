"""Hub: first session subscribes, last one leaving unsubscribes after the linger."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edge.sync.hub import Hub, Subscribe, Unsubscribe
from edge.timers import TimerWheel


def test_first_subscribes_last_lingers_then_unsubscribes():
    hub = Hub(linger_s=5)
    assert hub.add("s1", ["a", "b"], now=0) == [Subscribe("a"), Subscribe("b")]
    assert hub.add("s2", ["a"], now=1) == []
    assert hub.sessions("a") == {"s1", "s2"}
    hub.remove("s1", now=2)
    assert hub.sessions("a") == {"s2"} and hub.is_live("b")
    assert hub.expire(now=6.9) == []
    assert hub.expire(now=7) == [Unsubscribe("b")]
    assert not hub.is_live("b")
    hub.remove("s2", now=10)
    assert hub.statistics().lingering == 1
    assert hub.expire(now=15) == [Unsubscribe("a")]
    assert hub.statistics().channels == 0


def test_session_during_linger_revives_silently():
    hub = Hub(linger_s=5)
    hub.add("s1", ["a"], now=0)
    hub.remove("s1", now=1)
    assert hub.add("s2", ["a"], now=3) == []
    assert hub.expire(now=100) == []
    assert hub.sessions("a") == {"s2"}


def test_duplicates_unknown_and_statistics():
    hub = Hub()
    assert hub.add("s", ["a", "a"], now=0) == [Subscribe("a")]
    with pytest.raises(ValueError):
        hub.add("s", ["b"], now=0)
    hub.remove("unknown", now=0)
    st = hub.statistics()
    assert (st.channels, st.sessions, st.subscriptions) == (1, 1, 1)
    assert hub.sessions("nothing") == frozenset()


def test_timer_wheel_buckets():
    w = TimerWheel(resolution_s=1.0)
    w.schedule("a", 1.2)
    w.schedule("b", 2.0)
    w.schedule("c", 5.5)
    assert w.pop_due(1.9) == []
    assert sorted(w.pop_due(2.0)) == ["a", "b"]
    assert len(w) == 1
    assert w.pop_due(100) == ["c"] and len(w) == 0


class K:
    """A session with a kind, as the edge's are."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def test_kinds_per_channel_and_in_all():
    hub: Hub[object] = Hub()
    a, b, c = K("stream"), K("ws"), K("stream")
    hub.add(a, ["x", "y", "x"], now=0)  # a channel named twice counts once
    hub.add(b, ["x"], now=0)
    hub.add(c, ["y"], now=0)
    hub.add("no-kind", ["x"], now=0)  # not counted, still a member
    assert hub.kinds("x") == {"stream": 1, "ws": 1}
    assert hub.kinds("y") == {"stream": 2}
    assert hub.kinds("none") == {}
    assert hub.kind_totals() == {"stream": 2, "ws": 1}
    hub.kinds("x")["ws"] = 99  # a copy: the hub's counts are its own
    assert hub.kinds("x")["ws"] == 1
    hub.remove(a, now=1)
    hub.remove(a, now=1)  # unknown now: no-op
    assert hub.kinds("x") == {"ws": 1} and hub.kinds("y") == {"stream": 1}
    hub.remove(b, now=1)
    hub.remove(c, now=1)
    hub.remove("no-kind", now=1)
    assert hub.kinds("x") == {} and hub.kind_totals() == {}
    assert hub._kinds == {}  # nothing left behind for channels that emptied


def test_kinds_match_a_count_of_the_members_whatever_the_order():
    rng = random.Random(3)
    hub: Hub[object] = Hub()
    live: list[K] = []
    for step in range(2000):
        if live and rng.random() < 0.45:
            hub.remove(live.pop(rng.randrange(len(live))), now=step)
        else:
            k = K(rng.choice(["stream", "response", "ws"]))
            hub.add(k, rng.sample(["a", "b", "c", "d"], rng.randint(1, 3)), now=step)
            live.append(k)
        if step % 97 == 0 or step == 1999:
            for ch in "abcd":
                assert hub.kinds(ch) == dict(Counter(s.kind for s in hub.sessions(ch)))
            assert hub.kind_totals() == dict(Counter(s.kind for s in live))
