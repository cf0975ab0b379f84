"""LinkWatch (broker restart / lost link detection) and the epoch-change policy, sans-IO."""

from __future__ import annotations

from types import SimpleNamespace

from edge.grip.instruct import parse_instruct
from edge.grip.session import ResponseSession, StreamSession
from edge.sessionstate import SessionState
from edge.sync.repair import (
    EpochNotice,
    LinkLost,
    LinkWatch,
    LinkWatches,
    Resync,
    tell_epoch_change,
)
from edge.ws.session import WsSession


def test_first_heartbeat_restart_and_loss():
    w = LinkWatch(timeout_s=3.0, now=0.0)
    assert w.tick(1.0) == []
    assert w.on_heartbeat("b1", 1.0) == [Resync("link up", "b1")]
    assert w.on_heartbeat("b1", 2.0) == []
    assert w.tick(4.9) == []
    assert w.tick(5.5) == [LinkLost(3.5)]
    assert w.tick(9.0) == []  # reported once
    assert not w.up
    assert w.on_heartbeat("b1", 9.5) == [Resync("link back", "b1")]
    (r,) = w.on_heartbeat("b2", 10.0)
    assert r.broker_id == "b2" and "restarted" in r.reason
    st = w.statistics()
    assert (st.restarts, st.losses, st.resyncs, st.up) == (1, 1, 3, True)


def test_never_heard_from_the_broker_is_a_loss_once():
    w = LinkWatch(timeout_s=2.0, now=10.0)
    assert w.tick(12.5) == [LinkLost(2.5)]
    assert w.tick(20.0) == []
    assert w.on_heartbeat("b", 21.0) == [Resync("link up", "b")]


class _Sock:
    def fileno(self):
        return -1


class _Nursery:
    def __init__(self):
        self.started = []

    def start_soon(self, fn, *args):
        self.started.append((fn.__name__, args))


def test_epoch_change_policy_per_transport():
    hold = parse_instruct(200, "OK", [("Grip-Hold", "stream"), ("Grip-Channel", "c")], b"")
    stream = StreamSession(_Sock(), hold, True, 0.0)
    rhold = parse_instruct(200, "OK", [("Grip-Hold", "response"), ("Grip-Channel", "c")], b"")
    resp = ResponseSession(rhold, True, 30.0)
    app = SimpleNamespace(nursery=_Nursery())
    ws = WsSession(app, _Sock(), side=None, prefix="", now=0.0, max_message=1 << 20)
    notice = tell_epoch_change([stream, resp, ws], "c")
    assert (notice.hooked, notice.streams_closed, notice.responses_answered) == (1, 1, 1)
    assert stream.dead and stream.done and "epoch" in stream.reason
    assert resp.result.startswith(b"HTTP/1.1 ") and resp.state is SessionState.CLOSING
    assert app.nursery.started == [
        ("_tell_origin", (b'c:{"type": "history-lost", "channel": "c"}',))
    ]
    # told once: ended sessions are left alone
    assert tell_epoch_change([stream, resp], "c") == EpochNotice("c", 0, 0, 0)


def test_activity_between_heartbeats_makes_a_later_silence_a_loss_again():
    """A broker restarts, fans out messages, and dies before its first heartbeat reached the
    edge: its frames count as a sign of life, so its silence is reported (the tail repair)."""
    w = LinkWatch(timeout_s=2.0, now=0.0)
    w.on_heartbeat("b1", 1.0)
    assert w.tick(4.0) == [LinkLost(3.0)]  # died
    w.on_activity(5.0)  # restarted: its messages arrive, no heartbeat yet
    assert w.up and w.tick(6.0) == []
    assert w.tick(7.5) == [LinkLost(2.5)]  # died again: lost again
    w.on_activity(5.0)  # an old sign of life changes nothing
    assert not w.up and w.tick(9.0) == []
    assert w.on_heartbeat("b2", 10.0) == [Resync("broker restarted (was b1)", "b2")]


def test_link_watches_are_per_broker():
    ws = LinkWatches(2, timeout_s=2.0, now=0.0)
    ws.on_heartbeat(0, "a", 1.0)
    ws.on_heartbeat(1, "b", 1.0)
    ws.on_heartbeat(0, "a", 3.0)
    assert ws.tick(3.5) == [(1, LinkLost(2.5))]  # broker 1 lost, broker 0 still up
    assert ws.up and ws.up_count() == 1
    assert ws.tick(6.0) == [(0, LinkLost(3.0))]
    assert not ws.up
