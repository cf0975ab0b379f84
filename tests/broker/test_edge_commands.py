"""conncheck and refresh (reference 6.2): parsing on the command socket
(``broker.ingest.commands``), the relayed wire messages (``broker.wire``) and the broker's
bookkeeping of the edges' answers (``broker.ingest.edgecmds``).  No sockets."""

from __future__ import annotations

import pytest
import tnetstring as tnet3

from broker import control, wire
from broker.errors import RemoteProtocolError
from broker.ingest import commands
from broker.ingest.edgecmds import EdgeCommands
from broker.wire import CommandAnswer, ConnCheckCommand, RefreshCommand

URIS = {"command": "tcp://127.0.0.1:5563", "publish-pull": "", "publish-sub": ""}


def run(request: dict) -> commands.CommandResult:
    return commands.handle_command(tnet3.dumps(request), URIS)


def reply_of(result: commands.CommandResult) -> dict:
    assert result.reply is not None
    return tnet3.loads(result.reply)


# -- parsing -----------------------------------------------------------------------------------


def test_conncheck_is_relayed_with_its_ids_deduplicated():
    r = run({b"id": b"9", b"method": b"conncheck", b"args": {b"ids": [b"a", b"b", b"a"]}})
    assert r.reply is None and r.error is None
    assert r.relay == ConnCheckCommand(0, ("a", "b")) and r.rid == b"9"


def test_conncheck_with_no_ids_is_relayed_too():
    assert run({b"method": b"conncheck", b"args": {b"ids": []}}).relay == ConnCheckCommand(0, ())


@pytest.mark.parametrize(
    "args", [{}, {b"ids": b"a"}, {b"ids": [b"a", 1]}, {b"ids": {b"a": b"b"}}, {b"cid": b"a"}]
)
def test_conncheck_bad_request(args):
    r = run({b"id": b"1", b"method": b"conncheck", b"args": args})
    assert r.relay is None
    assert reply_of(r) == {b"id": b"1", b"success": False, b"condition": b"bad-request"}


def test_refresh_by_cid_and_by_channel():
    assert run({b"method": b"refresh", b"args": {b"cid": b"x"}}).relay == RefreshCommand(0, "x")
    by_channel = run({b"method": b"refresh", b"args": {b"channel": b"ch"}}).relay
    assert by_channel == RefreshCommand(0, channel="ch")


def test_refresh_cid_wins_over_channel_as_in_pushpin():
    r = run({b"method": b"refresh", b"args": {b"cid": b"x", b"channel": b"ch"}})
    assert r.relay == RefreshCommand(0, cid="x")


@pytest.mark.parametrize(
    "args", [{}, {b"cid": 5}, {b"channel": [b"ch"]}, {b"cid": None, b"channel": b"ch"}]
)
def test_refresh_bad_request(args):
    r = run({b"method": b"refresh", b"args": args})
    assert r.relay is None
    assert reply_of(r) == {b"success": False, b"condition": b"bad-request"}


# -- replies -----------------------------------------------------------------------------------


def loads(b: bytes) -> dict:
    return tnet3.loads(b)


def test_conncheck_reply_lists_found_ids_in_request_order():
    c = ConnCheckCommand(3, ("a", "b", "c"))
    rep = loads(commands.relay_reply(b"r", c, {"c", "a", "zz"}, complete=True))
    assert rep == {b"id": b"r", b"success": True, b"value": [b"a", b"c"]}
    assert loads(commands.relay_reply(None, c, set(), complete=True)) == {
        b"success": True,
        b"value": [],
    }


def test_conncheck_reply_when_an_edge_did_not_answer():
    rep = loads(commands.relay_reply(None, ConnCheckCommand(1, ("a",)), set(), complete=False))
    assert rep == {b"success": False, b"condition": b"proxy-request-failed"}


def test_refresh_replies():
    cid = RefreshCommand(1, cid="x")
    assert loads(commands.relay_reply(None, cid, {"x"}, complete=False)) == {
        b"success": True,
        b"value": None,
    }
    assert loads(commands.relay_reply(None, cid, set(), complete=True)) == {
        b"success": False,
        b"condition": b"item-not-found",
    }
    assert loads(commands.relay_reply(None, cid, set(), complete=False)) == {
        b"success": False,
        b"condition": b"proxy-request-failed",
    }
    channel = RefreshCommand(1, channel="ch")
    for complete in (True, False):
        assert loads(commands.relay_reply(b"i", channel, set(), complete=complete)) == {
            b"id": b"i",
            b"success": True,
            b"value": None,
        }


# -- wire --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "c",
    [
        ConnCheckCommand(1, ("a", "b:2")),
        ConnCheckCommand(2, ()),
        RefreshCommand(3, cid="x"),
        RefreshCommand(4, channel="ch"),
    ],
)
def test_command_round_trip(c):
    frame = wire.encode_command(c)
    assert wire.is_command(frame) and not wire.is_heartbeat(frame) and not wire.is_recover(frame)
    assert wire.decode_command(frame) == c


@pytest.mark.parametrize(
    "m, why",
    [
        ({"cmd": 1, "op": "conncheck", "ids": "a"}, "'ids' must be a list of strings"),
        ({"cmd": 1, "op": "conncheck", "ids": [1]}, "'ids' must be a list of strings"),
        ({"cmd": -1, "op": "conncheck", "ids": []}, "'cmd' must be a non-negative integer"),
        ({"cmd": 1, "op": "refresh"}, "exactly one of 'cid' and 'channel'"),
        ({"cmd": 1, "op": "refresh", "cid": "a", "channel": "b"}, "exactly one"),
        ({"cmd": 1, "op": "refresh", "cid": 3}, "'cid' must be a string"),
        ({"cmd": 1, "op": "zap"}, "unknown op 'zap'"),
    ],
)
def test_bad_commands(m, why):
    with pytest.raises(RemoteProtocolError, match=why):
        wire.decode_command(wire.COMMAND_TOPIC + wire.encode_control(m))


def test_bad_command_bytes():
    with pytest.raises(RemoteProtocolError, match="not a map"):
        wire.decode_command(wire.COMMAND_TOPIC + wire.encode_control([1]))
    with pytest.raises(RemoteProtocolError, match="bad command"):
        wire.decode_command(wire.COMMAND_TOPIC + b"\xc1")


def test_answer_round_trip_and_parse_control():
    a = CommandAnswer("edge0_1", 7, ("x", "y"))
    frame = wire.encode_request(a)
    assert wire.decode_request(frame) == a
    req = control.parse_control(frame)
    assert req.op == "answer" and req.request == a and req.rid is None


@pytest.mark.parametrize(
    "m, why",
    [
        ({"op": "answer", "edge": "e", "cmd": "1", "found": []}, "'cmd'"),
        ({"op": "answer", "edge": 1, "cmd": 1, "found": []}, "'edge' must be a string"),
        ({"op": "answer", "edge": "e", "cmd": 1, "found": [b"x"]}, "'found'"),
    ],
)
def test_bad_answers(m, why):
    with pytest.raises(control.ControlError, match=why):
        control.parse_control(wire.encode_control(m))


def test_edge_topic_and_notices():
    t = wire.edge_topic("gripcast-edge0_12")
    assert t.startswith(wire.EDGE_TOPIC) and t.endswith(wire.SEP)
    assert wire.edge_notice(b"\x01" + t) == (True, "gripcast-edge0_12")
    assert wire.edge_notice(b"\x00" + t) == (False, "gripcast-edge0_12")
    # neither a channel notice nor the other reserved topics
    assert wire.subscription_notice(b"\x01" + t) is None
    for other in (wire.topic("ch"), wire.HEARTBEAT_TOPIC, wire.COMMAND_TOPIC, wire.EDGE_TOPIC):
        assert wire.edge_notice(b"\x01" + other) is None
    assert wire.edge_notice(b"\x02" + t) is None
    assert wire.edge_notice(b"\x01" + wire.EDGE_TOPIC + b"\xff\x00") is None


def test_wire_version_counts_the_commands():
    assert wire.WIRE_VERSION >= 2  # 2 added them (3: the heartbeat's trailing positions)


# -- the broker's bookkeeping (broker.ingest.edgecmds) -----------------------------------------


def edges(*names: str) -> EdgeCommands:
    s = EdgeCommands()
    for n in names:
        assert s.on_notice(True, n) == []
    return s


def test_no_edge_settles_at_once():
    s = EdgeCommands()
    p, frame = s.start(ConnCheckCommand(0, ("a",)), [b"peer", b""], b"1")
    assert frame is None and p.settled and p.found == set()
    assert s.statistics().pending == 0


def test_conncheck_waits_for_every_edge():
    s = edges("e1", "e2")
    p, frame = s.start(ConnCheckCommand(0, ("a", "b")), [b"peer"], None)
    assert frame is not None and wire.decode_command(frame) == ConnCheckCommand(p.cmd, ("a", "b"))
    assert s.on_answer(CommandAnswer("e1", p.cmd, ())) is None
    assert s.on_answer(CommandAnswer("e2", p.cmd, ("b",))) is p
    assert p.found == {"b"} and p.settled
    assert s.on_answer(CommandAnswer("e2", p.cmd, ("b",))) is None  # late duplicate: ignored
    assert s.finish(p.cmd) is None


def test_conncheck_settles_early_when_every_id_is_found():
    s = edges("e1", "e2")
    p, _ = s.start(ConnCheckCommand(0, ("a",)), [], None)
    assert s.on_answer(CommandAnswer("e2", p.cmd, ("a",))) is p


def test_refresh_cid_settles_when_found_and_channel_waits_for_all():
    s = edges("e1", "e2")
    p, _ = s.start(RefreshCommand(0, cid="x"), [], None)
    assert s.on_answer(CommandAnswer("e1", p.cmd, ("x",))) is p
    q, _ = s.start(RefreshCommand(0, channel="ch"), [], None)
    assert s.on_answer(CommandAnswer("e1", q.cmd, ("x",))) is None
    assert s.on_answer(CommandAnswer("e2", q.cmd, ())) is q


def test_an_edge_going_away_counts_as_answered():
    s = edges("e1", "e2")
    p, _ = s.start(ConnCheckCommand(0, ("a",)), [], None)
    assert s.on_answer(CommandAnswer("e1", p.cmd, ())) is None
    assert s.on_notice(False, "e2") == [p]
    assert s.edges == {"e1"}


def test_an_edge_arriving_later_is_not_waited_for():
    s = edges("e1")
    p, _ = s.start(ConnCheckCommand(0, ("a",)), [], None)
    s.on_notice(True, "e2")
    assert s.on_answer(CommandAnswer("e1", p.cmd, ())) is p


def test_timeout_leaves_it_unsettled():
    s = edges("e1", "e2")
    p, _ = s.start(ConnCheckCommand(0, ("a",)), [b"x"], b"r")
    s.on_answer(CommandAnswer("e1", p.cmd, ("zz",)))
    assert s.finish(p.cmd) is p and not p.settled and p.waiting == {"e2"}
    assert s.on_answer(CommandAnswer("e2", p.cmd, ())) is None
    st = s.statistics()
    assert (st.edges, st.pending, st.started, st.settled, st.timed_out) == (2, 0, 1, 0, 1)


def test_commands_are_numbered_apart():
    s = edges("e1")
    p1, _ = s.start(ConnCheckCommand(0, ("a",)), [], None)
    p2, _ = s.start(ConnCheckCommand(0, ("a",)), [], None)
    assert p1.cmd != p2.cmd
    assert s.on_answer(CommandAnswer("e1", p2.cmd, ())) is p2
    assert s.statistics().pending == 1


def test_an_empty_conncheck_needs_no_edge():
    s = edges("e1")
    p, frame = s.start(ConnCheckCommand(0, ()), [], None)
    assert frame is None and p.settled
