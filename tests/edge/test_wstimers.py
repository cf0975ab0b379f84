"""WebSocket keep-alive / send-delayed on the shared timer wheel (edge.wstimers), sans-IO:
time is passed in; the session is a real ``WsSession`` on one end of a socketpair."""

from __future__ import annotations

import math
import socket
from types import SimpleNamespace

import pytest

from _speedups import ws_frame
from edge.grip.cache import InstructCache
from edge.timers import TimerWheel
from edge.ws import control as wc
from edge.ws.connection import OP_TEXT
from edge.ws.session import WsSession
from edge.ws.timers import WsTimers


@pytest.fixture
def session():
    a, b = socket.socketpair()
    app = SimpleNamespace(ws_timers=WsTimers(None, resolution_s=0.1))
    s = WsSession(app, a, side=None, prefix="", now=0.0, max_message=1 << 20)
    yield s
    a.close()
    b.close()


def _ka(mode: str, timeout_s: float = 1.0) -> wc.KeepAlive:
    return wc.KeepAlive(message=wc.OutMessage("text", b"ka"), timeout_s=timeout_s, mode=mode)


def test_interval_keepalive_fires_every_interval(session):
    timers = session.app.ws_timers
    session.keep_alive, session.ka_last = _ka("interval"), 0.0
    session.arm_timer()
    assert timers.due(0.5) == []
    assert timers.due(1.05) == [(session, [ws_frame(OP_TEXT, b"ka")])]
    assert session.timer_at == pytest.approx(2.05)
    assert timers.due(1.5) == []
    assert timers.due(2.2) == [(session, [ws_frame(OP_TEXT, b"ka")])]
    assert len(timers.wheel) == 1  # one entry per session, re-armed each time


def test_idle_keepalive_waits_for_silence(session):
    timers = session.app.ws_timers
    session.keep_alive, session.ka_last = _ka("idle"), 0.0
    session.arm_timer()
    session.last_out = 0.8  # traffic went out meanwhile
    assert timers.due(1.05) == []  # not idle for a full timeout yet: re-armed for 1.8
    assert session.timer_at == pytest.approx(1.8)
    assert timers.due(1.95) == [(session, [ws_frame(OP_TEXT, b"ka")])]


def test_send_delayed_fires_once_and_earlier_entry_wins(session):
    timers = session.app.ws_timers
    session.keep_alive, session.ka_last = _ka("interval", 10.0), 0.0
    session.arm_timer()
    session.delayed, session.delayed_at = wc.OutMessage("text", b"later"), 1.0
    session.arm_timer()  # earlier than the keep-alive: armed again for 1.0
    assert session.timer_at == 1.0
    assert timers.due(1.1) == [(session, [ws_frame(OP_TEXT, b"later")])]
    assert session.delayed is None and session.delayed_at == math.inf
    assert timers.due(5.0) == []  # the stale 10 s entry is not due; nothing else fires
    assert timers.due(10.2) == [(session, [ws_frame(OP_TEXT, b"ka")])]


def test_ended_or_closing_sessions_get_nothing(session):
    timers = session.app.ws_timers
    session.delayed, session.delayed_at = wc.OutMessage("text", b"x"), 1.0
    session.arm_timer()
    session.end()
    assert timers.due(2.0) == []
    assert len(timers.wheel) == 0


def test_wheel_next_due():
    w = TimerWheel(0.5)
    assert w.next_due() is None
    w.schedule("a", 3.2)
    w.schedule("b", 1.1)
    assert w.next_due() == 1.5
    assert w.pop_due(1.5) == ["b"]
    assert w.next_due() == 3.5


def test_instruct_cache_shares_holds_and_heads():
    cache = InstructCache()
    instruct, stream_head = cache.instruct, cache.stream_head
    raw = [(b"Grip-Hold", b"stream"), (b"Grip-Channel", b"c0"), (b"Content-Type", b"text/plain")]
    h1 = instruct(200, "OK", raw, b"", prefix="", extra_channels=())
    h2 = instruct(200, "OK", list(raw), b"", prefix="", extra_channels=())
    assert h1 is h2 and h1.mode == "stream" and [c.name for c in h1.channels] == ["c0"]
    h3 = instruct(200, "OK", raw, b"", prefix="p-", extra_channels=())
    assert [c.name for c in h3.channels] == ["p-c0"]  # the prefix is part of the key
    h4 = instruct(200, "OK", raw, b"", prefix="", extra_channels=(), stream_body=b"hi\n")
    assert h4.body == b"hi\n" and h1.body == b""
    head = stream_head(h1, chunked=True)
    assert head is stream_head(h2, chunked=True)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
    assert b"Connection: close" in stream_head(h1, chunked=False)


class _Unpark:
    """Stands in for the parked connection's ``ParkedWs`` (its ``cancel()`` wakes it)."""

    def __init__(self) -> None:
        self.woken = 0

    def cancel(self) -> None:
        self.woken += 1


def test_parked_woh_keep_alive_interval_wakes_the_connection_once(session):
    """A parked WebSocket-over-HTTP session (edge.parking): no request loop runs, so the
    origin's Keep-Alive-Interval request is due through the edge's WsTimers, which kick the
    origin side: the parked connection is woken once (its new task starts the loop)."""
    from edge.ws.over_http import WohOrigin

    app = SimpleNamespace(upstream=SimpleNamespace(trusted_now=lambda headers: False))
    route = SimpleNamespace(targets=[SimpleNamespace(subs=())])
    side = WohOrigin(app, route, [], b"/ws")
    side.parkable, side.keep_alive_s, side.last_request = True, 20.0, 0.0
    side.unpark = unpark = _Unpark()  # type: ignore[assignment]
    session.side = side
    timers = session.app.ws_timers
    session.arm_timer()
    assert session.timer_at == 20.0
    assert timers.due(19.0) == [] and unpark.woken == 0
    assert timers.due(20.1) == []  # (no frame: the loop posts the request)
    assert unpark.woken == 1 and side.active
    assert session.timer_at == math.inf  # running: not armed for it again
    side.kick()  # already woken: nothing more
    assert unpark.woken == 1
    side.active, side.last_request = False, 20.5  # the loop posted and went idle
    session.arm_timer()
    assert session.timer_at == 40.5
    side.detached = True  # a detached side has no requests: nothing is due
    assert side.idle_due() == math.inf
