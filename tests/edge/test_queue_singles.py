"""``_speedups.queue_singles`` (both twins): a batch over many channels, queued in compiled
code for the plain sessions, gives every session what the per-message rules give."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge.sync.deliver as deliver_mod
from broker.wire import Envelope
from edge.grip.nextlink_track import PrevIds
from edge.grip.session import StreamSession
from edge.sync.deliver import Deliverer
from edge.sync.hub import Hub
from edge.sync.resume import _Gate
from edge.ws.session import WsSession
from edge.ws.timers import WsTimers
from tests.edge.puresends import use_pure_sends
from tests.edge.test_deliver import PipeEnd, session

CHANNELS = ["a", "b", "c", "d"]


@pytest.fixture(autouse=True)
def pure_sends(monkeypatch):
    """Pipes stand in for sockets: the pure send twins (the compiled ones use send(2))."""
    use_pure_sends(monkeypatch)


def _usable(twins) -> None:
    """The compiled twin takes only sessions of its own SessionCore: under
    GRIPCAST_NO_SPEEDUPS the edge's sessions derive from the pure one (that shard runs the pure
    twin, the other shard the compiled one)."""
    if twins.kind == "compiled" and not issubclass(StreamSession, twins.SessionCore):
        pytest.skip("the edge's sessions derive from the other twin's SessionCore")


def _disabled(envs, start, *args):
    return start, 0  # every message to the per-message rules


stream_fmt = st.fixed_dictionaries(
    {
        "content": st.sampled_from(
            [b"x\n", "text é\n", b"", b"id: %(id)s\ndata: y\n\n", bytearray(b"ba")]
        )
    },
    optional={
        "action": st.sampled_from(["send", "send", "close", "hint"]),
        "content-filters": st.just(["skip-self"]),
    },
)
ws_fmt = st.fixed_dictionaries(
    {"content": st.sampled_from([b"w", "wé".encode()])},
    optional={"action": st.sampled_from(["send", "send", "close"])},
)
envelope = st.builds(
    lambda ch, s, w, with_id, sender: (ch, s, w, with_id, sender),
    st.sampled_from(CHANNELS),
    st.one_of(st.none(), stream_fmt, stream_fmt),
    st.one_of(st.none(), ws_fmt),
    st.booleans(),
    st.sampled_from([None, None, "u1"]),
)
# which sessions are on which channels: (kind, channels)
KINDS = ["plain", "raw", "tracked", "filtered", "closing", "gated", "ws", "ws_deflate"]
placement = st.lists(
    st.tuples(st.sampled_from(KINDS), st.sets(st.sampled_from(CHANNELS), min_size=1)),
    min_size=1,
    max_size=8,
)


def _envs(spec):
    seqs: dict[str, int] = {}
    out = []
    for ch, s, w, with_id, sender in spec:
        seqs[ch] = seqs.get(ch, 0) + 1
        formats = {}
        if s is not None:
            formats["http-stream"] = dict(s)
        if w is not None:
            formats["ws-message"] = dict(w)
        out.append(
            Envelope(
                channel=ch,
                seq=seqs[ch],
                epoch="e",
                id=f"i{ch}{seqs[ch]}" if with_id else None,
                meta={"sender": sender} if sender else {},
                formats=formats,
                ts=0.5,
            )
        )
    return out


async def _run(spec, places, singles):
    from edge.ws.deflate import Deflate

    app = SimpleNamespace(ws_timers=WsTimers(None, resolution_s=0.1))
    side = SimpleNamespace(close_published=lambda: None)
    hub = Hub()
    d = Deliverer(hub, 1 << 20, spawn=None)
    from broker.histogram import IntHistogram

    d.latency = IntHistogram()
    ends = []  # (reader, session)
    for kind, chans in places:
        if kind.startswith("ws"):
            a, b = socket.socketpair()
            b.setblocking(False)
            s = WsSession(
                app,
                a,
                side=side,
                prefix="",
                now=0.0,
                max_message=1 << 20,
                deflate=Deflate() if kind == "ws_deflate" else None,
            )
            ends.append(((a, b), s))
        else:
            pipe = PipeEnd()
            s = session(pipe, chunked=kind != "raw")
            if kind == "tracked":
                s.track = PrevIds({ch: "x" for ch in chans})
            elif kind == "filtered":
                s.filters = {ch: ("skip-self",) for ch in chans}
                s.meta = {"user": "u1"}
            elif kind == "closing":
                s.close()
            ends.append((pipe, s))
        hub.add(s, sorted(chans), 0)
        if kind == "gated":
            d.gate[(s, sorted(chans)[0])] = _Gate()
    deliver_mod.queue_singles = singles
    out = []
    try:
        await d.deliver(_envs(spec), now=1.0)
        for end, s in ends:
            if isinstance(end, tuple):
                try:
                    data = end[1].recv(1 << 20)
                except BlockingIOError:
                    data = b""
            else:
                data = end.read()
            held = [[e.seq for e in g] for (gs, _ch), g in d.gate.items() if gs is s]
            out.append((data, bytes(s.buf), s.cursors(), s.state, held))
    finally:
        for end, _s in ends:
            if isinstance(end, tuple):
                end[0].close()
                end[1].close()
            else:
                end.close()
    stats = d.statistics()
    lat = d.latency.statistics()  # (its total holds the wall clock of the run: not compared)
    return out, stats.messages, stats.deliveries, lat.count


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(envelope, min_size=2, max_size=10), placement)
def test_queue_singles_delivers_what_the_per_message_rules_do(monkeypatch, twins, spec, places):
    _usable(twins)
    real = deliver_mod.queue_singles
    try:
        fast = trio.run(_run, spec, places, twins.queue_singles)
        rules = trio.run(_run, spec, places, _disabled)
    finally:
        deliver_mod.queue_singles = real
    assert fast == rules


def test_plain_singles_are_queued_by_queue_singles(twins):
    """The many-channels case itself is taken (not left to the rules): every message."""
    _usable(twins)
    taken = []

    def counting(envs, start, *args):
        j, n = twins.queue_singles(envs, start, *args)
        taken.append(n)
        return j, n

    spec = [(ch, {"content": b"m\n"}, None, True, None) for ch in CHANNELS]
    spec[3] = ("d", {"content": "id: %(id)s\n"}, {"content": b"w"}, False, None)
    places = [("plain", {ch}) for ch in CHANNELS] + [("ws", {"a"}), ("raw", {"b"})]
    real = deliver_mod.queue_singles
    try:
        fast = trio.run(_run, spec, places, counting)
        rules = trio.run(_run, spec, places, _disabled)
    finally:
        deliver_mod.queue_singles = real
    assert taken == [4]  # one call took the whole batch
    assert fast == rules
    assert fast[0][0][0] == b"2\r\nm\n\r\n"
    assert fast[0][3][0] == b"8\r\nid: e:1\n\r\n"  # the cursor rendered, str content


class _Recorder:
    """Not an IntHistogram: queue_singles calls its ``observe`` per message."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def observe(self, value: float, n: int = 1) -> None:
        self.calls.append((value, n))


def test_queue_singles_observes_latency_as_observe_does(twins):
    """The latency of each message taken, once for its sessions: an ``IntHistogram`` ends
    exactly as ``observe`` called per message leaves it (buckets at and around each bound,
    a future timestamp counted as 0, none for ``ts`` 0, what it held before kept), and any
    other histogram gets its ``observe`` calls."""
    _usable(twins)
    from broker.histogram import LATENCY_BUCKETS_S, IntHistogram
    from edge.grip.sseid import ID_TOKEN, render_ids
    from edge.ws.session import message_frame

    wall = 1_000_000.0
    ages = [-1.0, 0.0, 1e-9, 2e9, *LATENCY_BUCKETS_S]
    ages += [b * 1.000001 for b in LATENCY_BUCKETS_S] + [b * 0.999999 for b in LATENCY_BUCKETS_S]
    envs, members_of, pipes = [], {}, []
    for k, age in enumerate([*ages, None]):
        ch = f"c{k}"
        pipe = PipeEnd()
        pipes.append(pipe)
        members = {session(pipe)}
        if k % 3 == 0:  # some messages go to two sessions
            pipe2 = PipeEnd()
            pipes.append(pipe2)
            members.add(session(pipe2))
        members_of[ch] = members
        ts = 0.0 if age is None else wall - age
        envs.append(Envelope(ch, 1, "e", {"http-stream": {"content": b"x\n"}}, ts=ts))

    def run(lat):
        return twins.queue_singles(
            envs,
            0,
            members_of,
            {},
            StreamSession,
            WsSession,
            message_frame,
            deliver_mod.http_chunk,
            render_ids,
            ID_TOKEN,
            {},
            lat,
            wall,
        )

    try:
        want = IntHistogram()
        want.observe(0.25, 3)  # what it held before
        got = IntHistogram()
        got.observe(0.25, 3)
        for env in envs:
            if env.ts:
                want.observe(wall - env.ts, len(members_of[env.channel]))
        assert run(got) == (len(envs), len(envs))
        assert got.statistics() == want.statistics()
        rec = _Recorder()
        run(rec)
        assert rec.calls == [(wall - e.ts, len(members_of[e.channel])) for e in envs if e.ts]
    finally:
        for pipe in pipes:
            pipe.close()
