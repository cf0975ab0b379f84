"""Hub: first session subscribes, last one leaving unsubscribes after the linger."""

from __future__ import annotations

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
