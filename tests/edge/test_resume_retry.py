"""edge.sync.resume.Resume: a catch-up whose history request fails *for now* (the broker's
store failing over answers "store unavailable"; no broker answering in time) waits and asks
again, holding the session's live messages, and never skips what followed the cursor (chaos
run D: a WebSocket resume during a Sentinel failover missed two items).  trio's MockClock, a
real ``MemoryHistory``; the broker link, tracker and deliverer are the edge's three seams."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker.history import MemoryHistory
from broker.items import Item
from broker.wire import Envelope, ErrorReply, ReplayReply, ReplayRequest
from edge.sync import resume as resume_mod
from edge.sync.link import BrokerRefused, BrokerUnavailable
from edge.sync.resume import Resumer
from edge.sync.tracker import State


class Session:
    def __init__(self) -> None:
        self.id = "s1"
        self.got: list[int] = []
        self.cut: list[str] = []

    def gone(self) -> bool:
        return bool(self.cut)

    def cut_off(self, reason: str) -> None:
        self.cut.append(reason)


class Broker:
    """The broker's link: answers from ``history``; ``down`` requests fail first (``error``:
    "refused" = the store is unavailable, "timeout" = no broker answered)."""

    def __init__(self, app: App, down: int, error: str = "refused") -> None:
        self.app, self.down, self.error = app, down, error
        self.requests = 0

    async def request(self, req: ReplayRequest) -> ReplayReply:
        self.requests += 1
        await trio.sleep(0.01)  # a round trip
        if self.requests <= self.down:
            self.app.publish()  # publishing goes on meanwhile: the new item reaches the gate
            if self.error == "timeout":
                raise BrokerUnavailable("no broker answered replay (1 tried)")
            raise BrokerRefused("replay", ErrorReply(req.rid, "store unavailable"))
        h = self.app.h
        r = h.replay(req.channel, req.epoch, req.after_seq, req.after_id, req.limit)
        return ReplayReply(req.rid, req.channel, r.epoch, r.last_seq, r.complete, tuple(r.items))


class App:
    """``ResumeServices``: the tracker is live at the history's last seq (the PUB/SUB link
    keeps up); the deliverer hands envelopes to the session or its gate."""

    def __init__(self, n: int, down: int, error: str = "refused", max_items: int = 1000) -> None:
        self.h = MemoryHistory(max_items=max_items, new_epoch=lambda: "E")
        for _ in range(n):
            self.publish()
        self.session = Session()
        self.link = Broker(self, down, error)
        self.tracker = self
        self.deliverer = self
        self.gate: dict = {}

    # tracker (positioned at ``positioned_at`` on the clock: its position request failed
    # while the store was down, and is retried)
    positioned_at = 0.0

    def state(self, channel: str) -> State:
        return State.POSITION if trio.current_time() < self.positioned_at else State.LIVE

    def position(self, channel: str) -> tuple[str | None, int]:
        if self.state(channel) is State.POSITION:
            return (None, 0)
        return ("E", self.h.position("c").last_seq)

    async def wait_positioned(self, channels: list[str], timeout_s: float = 2.0) -> None:
        if self.state("c") is State.POSITION:  # edge.server: an event, or the timeout
            await trio.sleep(min(timeout_s, self.positioned_at - trio.current_time()))

    # deliverer
    async def deliver(self, envs: list[Envelope], now: float, only: Session) -> None:
        only.got.extend(e.seq for e in envs)

    def publish(self) -> None:
        n = self.h.position("c").last_seq + 1
        self.h.append(Item(channel="c", formats={}, id=f"m{n}"), 0.0)
        env = Envelope("c", n, "E", {})
        if getattr(self, "session", None) is None:
            return
        g = self.gate.get((self.session, "c"))
        if g is not None:
            g.append(env)
        else:
            self.session.got.append(n)


def run(app: App, cursor: str) -> tuple[bool, Resumer]:
    resumer = Resumer(app)  # type: ignore[arg-type]
    out: list[bool] = []

    async def main() -> None:
        out.append(await resumer.resume(app.session, "c", cursor))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out[0], resumer


@pytest.mark.parametrize("error", ["refused", "timeout"])
@pytest.mark.parametrize("down", [1, 3, 6])
def test_store_unavailable_then_answers_nothing_skipped(down, error):
    app = App(5, down, error)  # the client saw m3: 4 and 5 were published while it was away
    ok, resumer = run(app, "m3")
    last = app.h.position("c").last_seq
    assert last == 5 + down  # one more item published during each failed request
    assert ok and not app.session.cut
    assert app.session.got == list(range(4, last + 1))  # in order, no gap, no duplicate
    st = resumer.statistics()
    assert st.retries == down and st.answered == 1 and st.fell_back == 0 and st.active == 0


def test_store_unavailable_for_too_long_cuts_off_never_goes_live():
    """Past ``RETRY_FOR_S`` the session is cut off (its client resumes with its cursor): the
    live messages held meanwhile are not delivered, they would leave a gap before them."""
    app = App(5, down=10_000)
    ok, resumer = run(app, "m3")
    assert not ok and app.session.got == [] and len(app.session.cut) == 1
    assert "history unavailable" in app.session.cut[0]
    st = resumer.statistics()
    assert st.cut_off == 1 and st.active == 0
    # bounded: backoff doubling to RETRY_MAX_S within RETRY_FOR_S
    assert 5 < st.retries < resume_mod.RETRY_FOR_S / resume_mod.RETRY_FIRST_S


def test_cursor_older_than_history_is_still_a_resume_failure():
    """Only a cursor history does not hold fails the resume: the caller falls back (the held
    live messages go out, the WebSocket origin is told ``resume-failed``), no retry."""
    app = App(20, down=0, max_items=10)
    ok, resumer = run(app, "m3")
    assert not ok and not app.session.cut and app.session.got == []
    assert resumer.statistics().retries == 0 and app.link.requests == 1


def test_refusal_other_than_store_unavailable_is_not_retried():
    app = App(5, down=0)

    async def refuse(req: ReplayRequest) -> ReplayReply:
        app.link.requests += 1
        raise BrokerRefused("replay", ErrorReply(req.rid, "invalid channel"))

    app.link.request = refuse  # type: ignore[method-assign]
    ok, resumer = run(app, "m3")
    assert not ok and app.link.requests == 1 and resumer.statistics().retries == 0
    assert not app.session.cut  # a plain failure: falls back as before


@pytest.mark.parametrize("positioned_at, ok", [(7.0, True), (100.0, False)])
def test_replay_waits_for_the_tracker_position(positioned_at, ok):
    """The store answered the replay but the tracker's position is still unknown (its request
    failed meanwhile): the hand-over waits for it (a plain 2 s wait then went on without a
    hand-over point), or cuts the session off past ``RETRY_FOR_S``."""
    app = App(5, down=2)
    app.positioned_at = positioned_at
    got_ok, resumer = run(app, "m3")
    assert got_ok is ok
    if ok:
        assert app.session.got == [4, 5, 6, 7] and not app.session.cut
    else:
        assert app.session.got == [] and len(app.session.cut) == 1


@pytest.mark.parametrize("bound", [0.5, 3.0, 40.0])
def test_retry_bound_is_the_configured_resume_retry_for_s(bound):
    """``resume_retry_for_s`` (``Resumer.retry_for_s``) bounds the wait: the session is cut
    off once the next retry would pass it, never before, whatever the bound."""
    app = App(5, down=10_000)
    resumer = Resumer(app, retry_for_s=bound)  # type: ignore[arg-type]
    cut_at: list[float] = []

    async def main() -> None:
        ok = await resumer.resume(app.session, "c", "m3")
        assert not ok
        cut_at.append(trio.current_time())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(app.session.cut) == 1 and "history unavailable" in app.session.cut[0]
    # the last retry's backoff (at most RETRY_MAX_S) plus its round trip before the bound
    assert bound - resume_mod.RETRY_MAX_S - 0.05 <= cut_at[0] <= bound + 0.05


def test_reload_changes_the_retry_bound():
    """The edge applies the key on SIGHUP (``reloadable_keys``), through ``set_routes``."""
    from broker.config import load_config, reloadable_keys

    assert "resume_retry_for_s" in reloadable_keys("edge")
    assert load_config(env={}).resume_retry_for_s == resume_mod.RETRY_FOR_S
    assert load_config(env={"GRIPCAST_RESUME_RETRY_FOR_S": "2.5"}).resume_retry_for_s == 2.5
    from broker.runtime.reload import EDGE_RELOADABLE, plan_reload

    running = load_config(env={})
    plan = plan_reload(running, running.replace(resume_retry_for_s=3.0), EDGE_RELOADABLE)
    assert "resume_retry_for_s" in plan.applied and not plan.needs_restart
    assert plan.config.resume_retry_for_s == 3.0
