"""The broker's presence table (sans-IO, fake time) and the edge's counter
(``broker.ops.presence``, ``edge.ops.presence``), plus the HTTP answer and the event items."""

from __future__ import annotations

import json
from dataclasses import replace

from broker.namespaces import Namespace, NamespaceTable
from broker.ops.presence import PresenceEvent, PresenceQuery, PresenceTable
from broker.ops.presenceapi import PresenceService, event_item
from broker.wire import PresenceReport, decode_request, encode_request
from edge.ops.presence import PresenceCounter

NS = NamespaceTable([Namespace("chat:", presence=True), Namespace("chat:quiet:")])


def _table(**kw) -> PresenceTable:
    return PresenceTable(NS, silence_s=3.0, leave_grace_s=1.5, **kw)


def _r(
    edge: str,
    *users: tuple[str, str, int],
    full: bool = False,
    seq: int = 0,
    since: tuple[int, ...] = (),
) -> PresenceReport:
    return PresenceReport(edge, full, tuple(users), seq, since)


def _plain(events: list[PresenceEvent]) -> list[PresenceEvent]:
    """The events without their ids (the tests of ids compare those on their own)."""
    return [replace(e, id="") for e in events]


def test_join_once_across_edges_and_connections_leave_after_last():
    t = _table()
    ev = t.report(_r("e1", ("chat:a", "ann", 2), full=True), 0.0)
    assert _plain(ev) == [PresenceEvent("join", "chat:a", "ann", 2)]
    assert t.report(_r("e2", ("chat:a", "ann", 1), full=True), 0.1) == []  # already present
    assert t.users("chat:a") == [("ann", 3)]
    assert t.report(_r("e1", ("chat:a", "ann", 0)), 1.0) == []
    assert t.users("chat:a") == [("ann", 1)]
    assert t.expire(5.0) == []  # e2 is still there (its reports keep coming)
    t.report(_r("e2"), 2.0)
    t.report(_r("e2", ("chat:a", "ann", 0)), 3.0)
    assert t.users("chat:a") == []
    assert t.expire(4.0) == []  # in its leave grace
    assert _plain(t.expire(4.6)) == [PresenceEvent("leave", "chat:a", "ann", 0)]
    assert t.statistics().joins == 1 and t.statistics().leaves == 1


def test_back_within_grace_is_neither_leave_nor_join():
    t = _table()
    t.report(_r("e1", ("chat:a", "bob", 1), full=True), 0.0)
    t.report(_r("e1", ("chat:a", "bob", 0)), 1.0)  # a long-poll between two polls
    assert t.report(_r("e2", ("chat:a", "bob", 1), full=True), 2.0) == []
    assert t.expire(10.0 - 8.0 + 0.9) == []
    assert t.users("chat:a") == [("bob", 1)]


def test_silent_edge_users_leave_within_the_bound():
    t = _table()
    t.report(_r("e1", ("chat:a", "ann", 1), ("chat:b", "cy", 1), full=True), 0.0)
    t.report(_r("e2", ("chat:a", "dee", 1), full=True), 0.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        t.report(_r("e2"), now)  # e2 keeps reporting, e1 died at 0
    assert t.expire(3.1) == []  # silent 3.1 s: gone, its users in their grace
    assert t.users("chat:a") == [("dee", 1)]
    left = t.expire(4.7)
    assert sorted((e.channel, e.user) for e in left) == [("chat:a", "ann"), ("chat:b", "cy")]
    assert all(e.kind == "leave" for e in left)
    assert t.statistics().silent_edges == 1


def test_slow_edge_back_restores_its_pairs_before_its_diff():
    t = _table()
    t.report(_r("e1", ("chat:a", "ann", 1), ("chat:a", "bo", 1), full=True), 0.0)
    t.expire(3.5)
    leaves = t.expire(5.1)
    assert len(leaves) == 2
    ev = t.report(_r("e1", ("chat:a", "bo", 0)), 5.5)  # only slow: its diff is against before
    assert _plain(ev) == [PresenceEvent("join", "chat:a", "ann", 1)]
    assert t.users("chat:a") == [("ann", 1)]
    assert t.expire(70.0) == []  # silent again: ann in her grace; past forget_s: dropped
    assert _plain(t.expire(71.6)) == [PresenceEvent("leave", "chat:a", "ann", 0)]
    assert t.statistics().edges == 0 and t.statistics().silent_edges == 0


def test_full_report_replaces_what_the_edge_said():
    t = _table()
    t.report(_r("e1", ("chat:a", "ann", 1), ("chat:a", "bo", 2), full=True), 0.0)
    t.report(_r("e1", ("chat:a", "bo", 1), full=True), 1.0)
    assert t.users("chat:a") == [("bo", 1)]
    assert t.statistics().leaving == 1


def test_channels_without_presence_and_companions_ignored():
    t = _table()
    ev = t.report(
        _r("e1", ("chat:quiet:x", "a", 1), ("other", "a", 1), ("chat:a/presence", "a", 1)), 0.0
    )
    assert ev == [] and list(t.present()) == []
    assert t.statistics().ignored == 3
    assert t.companion("chat:a") == "chat:a/presence"
    assert PresenceTable(
        NamespaceTable([Namespace("x", presence=True, presence_suffix=".who")])
    ).companion("x1") == ("x1.who")


def test_report_wire_round_trip():
    r = _r("edge0", ("chat:a", "ann", 2), ("chat:b", "bo", 0), full=True)
    assert decode_request(encode_request(r)) == r
    r = _r("edge0", ("chat:a", "ann", 2), ("chat:b", "bo", 1), full=True, seq=9, since=(3, 9))
    assert decode_request(encode_request(r)) == r


def test_edge_counter_diffs_and_full_reports():
    c = PresenceCounter("e", NS)

    class S:
        def __init__(self, user: str | None) -> None:
            self.user = user

    sessions = {
        "chat:a": [S("ann"), S("ann"), S(None)],
        "chat:quiet:q": [S("x")],
        "chat:a/presence": [S("ann")],
    }

    def take(now: float, brokers: dict[int, str | None] | None = None) -> dict[int, PresenceReport]:
        return c.take(
            now,
            {0: "b1"} if brokers is None else brokers,
            list(sessions),
            lambda ch: sessions[ch],
            lambda s: s.user,
        )

    r = take(0.0)[0]
    assert r.full and r.users == (("chat:a", "ann", 2),) and r.seq == 1 and r.since == (1,)
    r = take(1.0)[0]
    assert r.users == () and not r.full and r.seq == 2  # nothing changed
    sessions["chat:a"] = [S("bo"), S("ann")]
    r = take(2.0)[0]
    assert not r.full and sorted(r.users) == [("chat:a", "ann", 1), ("chat:a", "bo", 1)]
    assert take(3.0, {0: "b2"})[0].full  # a broker restart: everything again
    c.report_lost()
    r = take(4.0, {0: "b2"})[0]
    assert r.full and dict(zip(r.users, r.since)) == {
        ("chat:a", "ann", 1): 1,  # since: the report that first listed the pair
        ("chat:a", "bo", 1): 3,
    }
    # a second broker: it gets everything, the first one the diff, with the same numbers
    sessions["chat:a"] = [S("bo")]
    both = take(5.0, {0: "b2", 1: "c1"})
    assert not both[0].full and both[0].users == (("chat:a", "ann", 0),)
    assert both[0].since == (0,)  # gone
    assert both[1].full and both[1].users == (("chat:a", "bo", 1),) and both[1].since == (3,)
    assert both[0].seq == both[1].seq == 6
    c.report_lost(1)  # broker 1 did not get it: the next one it gets is full, broker 0's not
    r2 = take(6.0, {0: "b2", 1: "c1"})
    assert not r2[0].full and r2[1].full
    assert list(take(7.0, {1: "c1"})) == [1]  # broker 0 not live: nothing for it
    assert take(8.0, {0: "b2", 1: "c1"})[0].full  # it missed one: everything
    seq = c.seq
    assert take(9.0, {}) == {} and c.seq == seq  # no live broker: no scan, no number
    assert take(40.0, {0: "b2"})[0].full  # every FULL_EVERY_S anyway


def _feed(t: PresenceTable, reports: list[tuple[float, PresenceReport]]) -> list[PresenceEvent]:
    out: list[PresenceEvent] = []
    for now, r in reports:
        out += t.expire(now)
        out += t.report(r, now)
    return out


def test_two_brokers_give_each_event_the_same_id():
    """Two brokers fed the same reports at slightly different times (their clocks and their
    expiry ticks differ) give every event the same id: Redis keeps one item of each."""
    reports = [
        (0.0, _r("e1", ("chat:a", "ann", 1), full=True, seq=1, since=(1,))),
        (0.2, _r("e2", ("chat:a", "bo", 1), full=True, seq=1, since=(1,))),
        (1.0, _r("e1", ("chat:a", "ann", 2), ("chat:a", "cy", 1), seq=2)),
        (1.2, _r("e2", ("chat:a", "ann", 1), seq=2)),  # ann on both edges: present once
        (2.0, _r("e1", ("chat:a", "ann", 0), seq=3)),
        (2.2, _r("e2", ("chat:a", "ann", 0), ("chat:a", "bo", 0), seq=3)),
        (3.0, _r("e1", seq=4)),
        (3.2, _r("e2", seq=4)),
        (4.0, _r("e1", ("chat:a", "ann", 1), seq=5)),  # ann back, past her grace: a new join
        (4.2, _r("e2", seq=5)),
        (5.0, _r("e1", seq=6)),
        (5.2, _r("e2", seq=6)),
    ]
    ta, tb = _table(), _table()
    a = _feed(ta, reports) + ta.expire(6.0)
    b = _feed(tb, [(now + 0.03, r) for now, r in reports]) + tb.expire(6.03)
    assert [(e.kind, e.user) for e in a] == [
        ("join", "ann"),
        ("join", "bo"),
        ("join", "cy"),
        ("leave", "ann"),
        ("leave", "bo"),
        ("join", "ann"),
    ]
    assert [(e.kind, e.user, e.id) for e in a] == [(e.kind, e.user, e.id) for e in b]
    assert len({e.id for e in a}) == len(a)  # ann's two joins: two items
    assert all(e.id.startswith(f"presence-{e.kind}-") for e in a)


def test_broker_new_to_running_edges_announces_no_join_again():
    """A broker that starts (or restarts) after the edges gets their full reports: the pairs
    listed from before are not joined again (no event), a pair new in that report is, and the
    leave of a pair it took over has the id every other broker gives it."""
    old = _table()
    first = old.report(_r("e1", ("chat:a", "ann", 1), full=True, seq=1, since=(1,)), 0.0)
    old.report(_r("e1", ("chat:a", "ann", 1), ("chat:a", "bo", 1), seq=2), 1.0)
    new = _table()
    ev = new.report(
        _r(
            "e1",
            ("chat:a", "ann", 1),
            ("chat:a", "bo", 1),
            ("chat:a", "cy", 1),
            full=True,
            seq=7,
            since=(1, 2, 7),
        ),
        7.0,
    )
    assert [(e.kind, e.user) for e in ev] == [("join", "cy")]
    assert new.users("chat:a") == [("ann", 1), ("bo", 1), ("cy", 1)]
    assert new.statistics().quiet_joins == 2
    # both see ann leave: the same leave id (from the same join)
    old.report(_r("e1", ("chat:a", "ann", 0), seq=8), 8.0)
    new.report(_r("e1", ("chat:a", "ann", 0), seq=8), 8.0)
    la, lb = old.expire(10.0), new.expire(10.0)
    assert [(e.kind, e.user) for e in la] == [("leave", "ann")] and la[0].id == lb[0].id
    assert first[0].id != la[0].id


def test_broker_restart_diff_before_the_full_report_announces_nothing_again():
    """The edge's first report to a restarted broker can be a diff (sent before the edge
    heard the new broker id): neither it nor the full report after it joins anyone again."""
    t = _table()
    assert t.report(_r("e1", ("chat:a", "ann", 2), seq=9, since=(3,)), 0.0) == []
    ev = t.report(
        _r("e1", ("chat:a", "ann", 2), ("chat:a", "bo", 1), full=True, seq=10, since=(3, 5)),
        1.0,
    )
    assert ev == [] and t.users("chat:a") == [("ann", 2), ("bo", 1)]
    ev = t.report(_r("e1", ("chat:a", "cy", 1), seq=11, since=(11,)), 2.0)
    assert [(e.kind, e.user) for e in ev] == [("join", "cy")]


def test_leave_ids_agree_for_a_user_on_two_edges_across_a_broker_restart():
    """A leave's id comes from the report (or the silence) that made the user absent, so a
    broker that came later agrees with the others even for a user on several edges."""
    a = _table()
    a.report(_r("e1", ("chat:a", "ann", 1), full=True, seq=1, since=(1,)), 0.0)
    a.report(_r("e2", ("chat:a", "ann", 1), full=True, seq=5, since=(5,)), 0.0)
    c = _table()  # started later: e2's report comes first
    c.report(_r("e2", ("chat:a", "ann", 1), full=True, seq=6, since=(5,)), 1.0)
    c.report(_r("e1", ("chat:a", "ann", 1), full=True, seq=2, since=(1,)), 1.0)
    for t in (a, c):
        t.report(_r("e1", ("chat:a", "ann", 0), seq=3), 2.0)
        t.report(_r("e2", ("chat:a", "ann", 0), seq=7), 2.1)
    la, lc = a.expire(4.0), c.expire(4.0)
    assert [(e.kind, e.user) for e in la] == [("leave", "ann")] and la[0].id == lc[0].id
    # an edge's silence: the same id on every broker too
    for t in (a, c):
        t.report(_r("e1", ("chat:a", "bo", 1), seq=4, since=(4,)), 5.0)
    sa, sc = a.expire(8.1) + a.expire(9.7), c.expire(8.2) + c.expire(9.8)
    assert [(e.kind, e.user) for e in sa] == [("leave", "bo")] and sa[0].id == sc[0].id


def test_forgotten_edge_back_joins_with_new_ids():
    t = _table()
    j = t.report(_r("e1", ("chat:a", "ann", 1), full=True, seq=1, since=(1,)), 0.0)
    leave = t.expire(3.5) + t.expire(5.1)
    assert [e.kind for e in leave] == ["leave"]
    t.expire(70.0)  # forgotten
    assert t.statistics().silent_edges == 0
    back = t.report(_r("e1", ("chat:a", "ann", 1), full=True, seq=70, since=(1,)), 70.5)
    assert [(e.kind, e.user) for e in back] == [("join", "ann")] and back[0].id != j[0].id


def test_unnumbered_reports_give_events_without_ids():
    """An edge that does not number its reports (an older one): no ids (they would all be
    alike, and the store would drop a user's second join as a repeat)."""
    t = _table()
    ev = t.report(_r("e1", ("chat:a", "ann", 1), full=True), 0.0)
    ev += t.report(_r("e1", ("chat:a", "ann", 0)), 1.0) + t.expire(3.0)
    assert [(e.kind, e.id) for e in ev] == [("join", ""), ("leave", "")]


def test_presence_query_answer():
    t = _table()
    t.report(_r("e1", ("chat:a", "ann", 2), ("chat:a", "bo", 1), full=True), 0.0)
    assert t.answer(PresenceQuery("chat:a", 1)) == {
        "channel": "chat:a",
        "count": 2,
        "users": [{"user": "ann", "connections": 2}],
        "truncated": True,
    }
    assert t.answer(PresenceQuery("other")) is None
    assert t.answer(PresenceQuery("chat:a/presence")) is None


def test_http_answer_and_event_items():
    async def publish(items):  # never called here
        raise AssertionError

    svc = PresenceService(NS, publish)
    svc.table.report(_r("e1", ("chat:a b", "ann", 2), full=True), 0.0)
    status, body, ctype, _ = svc.answer("GET", "/channels/chat%3Aa%20b/presence")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {
        "channel": "chat:a b",
        "count": 1,
        "users": [{"user": "ann", "connections": 2}],
        "truncated": False,
    }
    svc.table.report(_r("e1", ("chat:a b", "bo", 1)), 1.0)
    doc = json.loads(svc.answer("GET", "/channels/chat:a%20b/presence?limit=1")[1])
    assert doc["count"] == 2 and doc["truncated"] and doc["users"][0]["user"] == "ann"
    assert svc.answer("GET", "/channels/chat:a/presence?limit=0")[0] == 400
    assert svc.answer("GET", "/channels/chat:a/presence?limit=x")[0] == 400
    assert svc.answer("GET", "/channels/chat:a/presence?colour=red")[0] == 400
    assert svc.answer("GET", "/channels/other/presence")[0] == 404
    assert svc.answer("POST", "/channels/chat:a/presence")[0] == 405
    assert svc.answer("GET", "/channels/chat:a/items") is None
    assert svc.answer("GET", "/publish") is None
    assert svc.answer("GET", "/channels/%00/presence")[0] == 400
    item = event_item("chat:a/presence", PresenceEvent("leave", "chat:a", "ann", 0))
    assert item.channel == "chat:a/presence"
    doc = json.loads(item.formats["ws-message"]["content"])
    assert doc == {"type": "leave", "channel": "chat:a", "user": "ann", "connections": 0}
    assert item.formats["http-stream"]["content"].endswith(b"\n")


def test_event_for_a_companion_name_over_the_limit_is_skipped():
    import trio
    import trio.testing

    published = []

    async def publish(items):
        published.append(items)

    svc = PresenceService(NS, publish)

    async def main():
        svc.on_report(_r("e1", ("chat:" + "x" * 2000, "ann", 1), ("chat:b", "bo", 1), full=True))
        with trio.move_on_after(2):
            await svc.serve()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [i.channel for batch in published for i in batch] == ["chat:b/presence"]
    assert svc.publish_failures == 1
