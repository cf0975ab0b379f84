"""The held-session state machine (edge.sessionstate), without sockets.

The table is checked on its own (illegal events raise ``LocalProtocolError``), then each session
kind (stream hold, response hold, WebSocket) is driven through the real delivery path, the
shutdown, the link repair and the resume cut-off by hypothesis-chosen event sequences, with a
fake ``send_batch`` and a fake ``wait_writable`` standing in for the socket: the state only
moves forward along the table, and no byte is written once a session is DONE or DEAD (nor,
for a stream, after its final chunk).
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import LocalProtocolError
from broker.wire import Envelope
from edge.grip.instruct import Hold
from edge.grip.session import ResponseSession, StreamSession
from edge.ops import lifecycle
from edge.sessionstate import TRANSITIONS, HistoryLost, SessionEvent, SessionState, next_state
from edge.sync.deliver import Deliverer
from edge.sync.hub import Hub
from edge.sync.repair import tell_epoch_change
from edge.ws.session import WsSession

S, E = SessionState, SessionEvent


# -- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("event", list(E))
def test_every_pair_is_a_transition_or_an_error(state, event):
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[state, event]
    else:
        with pytest.raises(LocalProtocolError, match=f"{event.name} in state {state.name}"):
            next_state(state, event)


def test_the_state_never_goes_back_and_ended_is_final():
    for (state, _), new in TRANSITIONS.items():
        assert new >= state
        if state >= S.DONE:
            assert new >= S.DONE
    assert S.OPEN == 0  # the hot path tests ``if s.state:``


class _Fd:
    def __init__(self, n: int = 99) -> None:
        self.n = n

    def fileno(self) -> int:
        return self.n


def test_stream_close_twice_and_finish_while_open_are_bugs():
    s = StreamSession(_Fd(), Hold(mode="stream"), True, now=0.0)
    with pytest.raises(LocalProtocolError):
        s.finish()
    assert s.close() == b"0\r\n\r\n" and s.state is S.CLOSING
    with pytest.raises(LocalProtocolError):
        s.close()
    s.finish()
    assert s.state is S.DONE and s.done and not s.dead
    s.kill("late write error")
    assert s.state is S.DEAD and s.reason == "late write error"
    s.kill("again")
    assert s.reason == "late write error"  # the first reason stays
    s.end()
    assert s.state is S.DEAD


def test_response_first_answer_wins_and_the_rest_are_no_ops():
    s = ResponseSession(Hold(mode="response", body=b"t"), keep_alive=True, deadline=9)
    s.respond(b"one")
    s.respond(b"two")
    s.timeout()
    s.hint()
    assert s.result == b"one" and s.state is S.CLOSING and not s.retry and s.gone()
    assert s.on_history_lost("c") is HistoryLost.NOTHING
    assert s.end_for_shutdown() is None and s.result == b"one"
    s.end()
    assert s.state is S.DONE


# -- random event sequences through the real delivery path -----------------------------------

_fds = itertools.count(1000)


class FakeNet:
    """``send_batch`` and ``wait_writable`` for sessions whose fds are not real."""

    def __init__(self) -> None:
        self.mode = "full"
        self.sessions: dict[int, object] = {}
        self.sent: dict[int, bytearray] = {}
        self.writable = trio.Event()
        self.violations: list[str] = []

    def send_batch(self, fds, datas):
        out = []
        for fd, data in zip(fds, datas):
            s = self.sessions[fd]
            if s.state >= S.DONE:
                self.violations.append(f"write in state {s.state.name}")
            sent = self.sent.setdefault(fd, bytearray())
            if isinstance(s, StreamSession) and sent.endswith(b"0\r\n\r\n"):
                self.violations.append("write after the final chunk")
            n = {"full": len(data), "block": 0, "partial": len(data) // 2, "error": -32}[self.mode]
            if n > 0:
                sent += data[:n]
            out.append(n)
        return out

    async def wait_writable(self, sock) -> None:
        await self.writable.wait()
        self.writable = trio.Event()  # one write round per "writable" event


OPS = (
    "send",
    "close",
    "hint",
    "block",
    "partial",
    "error",
    "full",
    "writable",
    "shutdown",
    "lost",
    "cut",
    "timeout",
    "end",
)


def _formats(kind: str, op: str) -> dict:
    if op == "send":
        return {
            "http-stream": {"content": b"m"},
            "ws-message": {"content": b"m"},
            "http-response": {"body": b"m"},
        }
    if op == "close":
        return {
            "http-stream": {"action": "close"},
            "ws-message": {"action": "close"},
            "http-response": {"body": b"bye"},
        }
    return {"http-stream": {"action": "hint"}, "http-response": {"action": "hint"}}


async def _drive(kind: str, ops: list[str], chunked: bool) -> None:
    net = FakeNet()
    real_wait = trio.lowlevel.wait_writable
    import edge.sync.deliver as deliver_mod

    real_send = deliver_mod.send_batch
    trio.lowlevel.wait_writable = net.wait_writable
    deliver_mod.send_batch = net.send_batch
    try:
        async with trio.open_nursery() as nursery:
            hub = Hub()
            d = Deliverer(hub, 64, nursery.start_soon)
            fd = next(_fds)
            if kind == "stream":
                s = StreamSession(
                    _Fd(fd), Hold(mode="stream", next_link="http://o/n"), chunked, now=0.0
                )
                s.writing = False  # the head went out
            elif kind == "response":
                s = ResponseSession(Hold(mode="response", body=b"t"), keep_alive=True, deadline=9)
            else:
                app = SimpleNamespace(nursery=nursery, deliverer=d)
                # the origin side is told of a published close (edge.ws.over_http)
                side = SimpleNamespace(close_published=lambda: None)
                s = WsSession(app, _Fd(fd), side=side, prefix=None, now=0.0, max_message=1 << 20)
            net.sessions[fd] = s
            hub.add(s, ["c"], 0.0)
            first_result = None
            seq = itertools.count(1)
            prev = s.state
            for op in ops:
                if op in ("send", "close", "hint"):
                    env = Envelope("c", next(seq), "E", _formats(kind, op))
                    await d.deliver([env], trio.current_time())
                elif op in ("block", "partial", "error", "full"):
                    net.mode = op
                elif op == "writable":
                    net.writable.set()
                elif op == "shutdown":
                    w = lifecycle.end_session(s)
                    if w is not None:
                        await d.write_many([w], trio.current_time())
                elif op == "lost":
                    tell_epoch_change([s], "c")
                elif op == "cut":
                    s.cut_off("test")
                elif op == "timeout":
                    if isinstance(s, ResponseSession):
                        s.timeout()
                else:  # the connection task ends with the session
                    s.end()
                    hub.remove(s, 0.0)
                await trio.testing.wait_all_tasks_blocked()
                assert s.state >= prev, (prev, s.state)
                prev = s.state
                if isinstance(s, ResponseSession):
                    # CLOSING means answered; DONE may be unanswered (the client went away)
                    assert (s.result is not None) == (
                        s.state is S.CLOSING or (s.state is S.DONE and first_result is not None)
                    )
                    first_result = first_result or s.result
                    assert s.result is first_result  # one answer, never replaced
                assert not net.violations, net.violations
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.wait_writable = real_wait
        deliver_mod.send_batch = real_send


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["stream", "response", "ws"]),
    ops=st.lists(st.sampled_from(OPS), max_size=30),
    chunked=st.booleans(),
)
def test_random_event_sequences_stay_legal_and_never_write_after_close(kind, ops, chunked):
    trio.run(_drive, kind, ops, chunked)


def test_a_close_queued_behind_a_backlog_ends_the_stream_once_written():
    trio.run(_drive, "stream", ["block", "send", "close", "full", "writable"], True)
