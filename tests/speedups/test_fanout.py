"""The fused ingest helpers (issue 7, broker ingest): both twins, the same results.

* ``unpack_batch``: a ``B`` frame's msgpack body, the usual items already normalised; the
  compiled twin reads them straight from the bytes, and must give exactly what
  ``msgpack.unpackb`` + ``normalise_item`` give (the pure twin), for every input.
* ``encode_envelopes``: the fan-out frames, byte for byte ``topic + msgpack(envelope map)``.
* ``fan_out``: encodes and sends the live channels' frames on a real ZeroMQ socket (inproc),
  updates the trailing-marker positions, counts would-block sends.
* ``make_envelope``: an Envelope equal to the one ``__init__`` builds.
"""

from __future__ import annotations

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _speedups
from broker import wire
from broker.errors import RemoteProtocolError
from broker.items import Item
from broker.wire import Envelope

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _twins(name):
    mods = [_speedups.twin(name, False)]
    try:
        mods.append(_speedups.twin(name, True))
    except ImportError:
        pass
    return mods


def _visible(value):
    """A value with Items, key order and bytes-vs-str made comparable."""
    if isinstance(value, Item):
        return (
            "Item",
            value.channel,
            value.id,
            value.prev_id,
            value.no_seq,
            msgpack.packb([value.formats, value.meta], use_bin_type=True),
        )
    if isinstance(value, list):
        return [_visible(v) for v in value]
    if isinstance(value, dict):
        return ("dict", [(_visible(k), _visible(v)) for k, v in value.items()])
    return (type(value).__name__, value)


def _unpack_outcome(mod, data):
    try:
        return ("ok", _visible(mod.unpack_batch(data, Item)))
    except Exception as exc:  # noqa: BLE001 - the exception type is what must agree
        return ("error", type(exc).__name__)


# -- unpack_batch ---------------------------------------------------------------------------------

text = st.one_of(st.text(max_size=6), st.sampled_from(["", "\x00", "é" * 130, "x" * 300]))
string = st.one_of(text, text, st.binary(max_size=6), st.just(b"\xff\xfe"))
payload = st.one_of(text, st.binary(max_size=8))
send = st.fixed_dictionaries(
    {}, optional={"action": st.sampled_from(["send", "close", None, b"send"])}
)
odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=False),
    st.lists(st.integers(-1000, 1000), max_size=2),
    string,
)


def fmt(key):
    return st.builds(
        lambda base, p, extra: {**base, **({key: p} if p is not None else {}), **extra},
        send,
        st.one_of(payload, payload, st.none(), odd),
        st.dictionaries(
            st.sampled_from(["type", "code", "content-filters", "body", "content"]), odd, max_size=1
        ),
    )


formats = st.fixed_dictionaries(
    {},
    optional={
        "http-stream": st.one_of(fmt("content"), odd),
        "http-response": fmt("body"),
        "ws-message": fmt("content"),
    },
)
item = st.fixed_dictionaries(
    {
        "channel": st.one_of(st.sampled_from(["c", "news", "c"]), string),
        "formats": st.one_of(formats, formats, formats, odd),
    },
    optional={
        "id": st.one_of(string, st.none()),
        "prev-id": st.one_of(string, st.none()),
        "meta": st.one_of(st.dictionaries(text, text, max_size=2), st.none(), odd),
        "no-seq": st.one_of(st.booleans(), st.none(), odd),
        "size": odd,
        "other": odd,
    },
)
batch = st.lists(st.one_of(item, item, item, odd), max_size=6)


@SETTINGS
@given(batch, st.booleans(), st.data())
def test_unpack_batch_twins_agree(values, use_bin_type, data):
    encoded = msgpack.packb(values, use_bin_type=use_bin_type)
    i = data.draw(st.integers(0, len(encoded)))
    frame = data.draw(
        st.sampled_from(
            [
                encoded,
                encoded,
                encoded[:i],
                encoded + b"\x01",
                encoded[:i] + data.draw(st.binary(min_size=1, max_size=2)) + encoded[i + 1 :],
            ]
        )
    )
    outcomes = [_unpack_outcome(m, frame) for m in _twins("items")]
    # compared by repr too: a mutated frame can decode to a NaN float, and NaN != NaN
    assert all(o == outcomes[0] or repr(o) == repr(outcomes[0]) for o in outcomes), outcomes


@SETTINGS
@given(st.lists(item, max_size=5))
def test_unpack_batch_is_unpack_and_normalise(values):
    """The pure twin's definition, for any list of maps (so for every B frame)."""
    frame = msgpack.packb(values)
    want = []
    for value in msgpack.unpackb(frame, raw=False):
        got = _speedups.normalise_item(value, None, True, Item) if type(value) is dict else None
        want.append(value if got is None else got)
    for mod in _twins("items"):
        assert _visible(mod.unpack_batch(frame, Item)) == _visible(want)


usual_payload = st.fixed_dictionaries({}, optional={"action": st.sampled_from(["send", None])})
usual = st.fixed_dictionaries(
    {
        "channel": st.one_of(
            st.sampled_from(["c", "c", "news"]),
            st.text(min_size=1, max_size=300),
            st.text(min_size=1, max_size=4).map(str.encode),
        ),
        "formats": st.fixed_dictionaries(
            {},
            optional={
                "http-stream": st.builds(lambda a, p: {**a, "content": p}, usual_payload, payload),
                "http-response": st.builds(lambda a, p: {**a, "body": p}, usual_payload, payload),
                "ws-message": st.builds(lambda a, p: {**a, "content": p}, usual_payload, payload),
            },
        ),
    },
    optional={
        "id": st.one_of(text, st.none()),
        "prev-id": st.one_of(text, st.none()),
        "meta": st.one_of(st.dictionaries(text, text, max_size=3), st.none()),
        "no-seq": st.one_of(st.booleans(), st.none()),
    },
)


@SETTINGS
@given(st.lists(usual, max_size=8), st.booleans())
def test_unpack_batch_twins_agree_on_usual_frames(values, use_bin_type):
    """Frames of usual items only: the compiled twin's direct reader (no fallback)."""
    frame = msgpack.packb(values, use_bin_type=use_bin_type)
    outcomes = [_unpack_outcome(m, frame) for m in _twins("items")]
    # compared by repr too: a mutated frame can decode to a NaN float, and NaN != NaN
    assert all(o == outcomes[0] or repr(o) == repr(outcomes[0]) for o in outcomes), outcomes


def test_unpack_batch_usual_items(twins):
    values = [
        {"channel": "c", "id": "1", "formats": {"http-stream": {"content": "a\n"}}},
        {
            "channel": b"c",
            "prev-id": "1",
            "meta": {"k": "v"},
            "no-seq": False,
            "formats": {
                "ws-message": {"content": b"\xff"},
                "http-response": {"action": "send", "body": "é"},
            },
        },
        {"channel": "c", "formats": {"http-stream": {"content": "x", "content-filters": []}}},
        7,
    ]
    got = twins.unpack_batch(msgpack.packb(values, use_bin_type=True), Item)
    assert got[0] == Item(
        channel="c", id="1", formats={"http-stream": {"action": "send", "content": b"a\n"}}
    )
    assert got[1] == Item(
        channel="c",
        prev_id="1",
        meta={"k": "v"},
        formats={
            "http-response": {
                "action": "send",
                "code": 200,
                "reason": "OK",
                "headers": [],
                "body": "é".encode(),
                "body-patch": None,
            },
            "ws-message": {
                "action": "send",
                "type": "text",
                "content": b"\xff",
                "code": None,
                "reason": "",
            },
        },
    )
    assert list(got[1].formats) == ["http-response", "ws-message"]  # normalise_item's order
    assert got[2] == values[2] and got[3] == 7  # left for the complete parser
    assert twins.unpack_batch(msgpack.packb({"a": 1}), Item) == {"a": 1}
    with pytest.raises(msgpack.ExtraData):
        twins.unpack_batch(msgpack.packb([]) + b"\x01", Item)
    with pytest.raises(UnicodeDecodeError):  # invalid UTF-8 in a str: the whole frame fails
        twins.unpack_batch(b"\x91\x82\xa7channel\xa1\xff\xa7formats\x80", Item)


# -- encode_envelopes, make_envelope ------------------------------------------------------------

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.just("x" * 70000),
    st.just(b"y" * 300),
)
nested = st.recursive(
    leaf,
    lambda c: st.one_of(
        st.lists(c, max_size=20), st.dictionaries(st.text(max_size=4), c, max_size=20), st.tuples(c)
    ),
    max_leaves=30,
)
envelope = st.builds(
    Envelope,
    channel=st.sampled_from(["a", "b", "é"]),
    seq=st.integers(0, 2**63),
    epoch=st.text(max_size=17),
    formats=st.dictionaries(st.text(max_size=12), nested, max_size=3),
    id=st.one_of(st.none(), st.text(max_size=5)),
    prev_id=st.one_of(st.none(), st.text(max_size=5)),
    meta=st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    ts=st.one_of(st.floats(), st.integers(0, 10)),
)


def _encode_outcome(mod, envs):
    try:
        return ("ok", mod.encode_envelopes(envs))
    except Exception as exc:  # noqa: BLE001 - the exception type is what must agree
        return ("error", type(exc).__name__)


@SETTINGS
@given(st.lists(envelope, max_size=5))
def test_encode_envelopes_twins_agree_with_msgpack(envs):
    want = []
    try:
        want = (
            "ok",
            [wire.topic(e.channel) + msgpack.packb(e.to_map(), use_bin_type=True) for e in envs],
        )
    except Exception as exc:  # noqa: BLE001
        want = ("error", type(exc).__name__)
    for mod in _twins("fanout"):
        assert _encode_outcome(mod, envs) == want, mod.__name__


def test_encode_envelopes_edges(twins):
    envs = [
        Envelope(
            "c",
            1,
            "e",
            {
                "k": [
                    1,
                    -1,
                    -33,
                    -129,
                    -40000,
                    -(2**40),
                    2**64 - 1,
                    1.5,
                    True,
                    None,
                    "é" * 40,
                    b"x" * 300,
                    {"n": []},
                ]
            },
            ts=3,
        ),
        Envelope("c", 2, "e", {"t": (1, 2)}, meta={"a": "b"}, ts=1.25),
    ]
    assert twins.encode_envelopes(envs) == [wire.encode_envelope(e) for e in envs]
    with pytest.raises(OverflowError):
        twins.encode_envelopes([Envelope("c", 2**64, "e", {})])
    with pytest.raises(UnicodeEncodeError):
        twins.encode_envelopes([Envelope("c", 1, "\ud800", {})])


def test_make_envelope(twins):
    args = dict(
        channel="c", seq=3, epoch="e", formats={"f": 1}, id="i", prev_id=None, meta={}, ts=1.5
    )
    env = twins.make_envelope(Envelope, *args.values())
    assert type(env) is Envelope and env == Envelope(**args)
    with pytest.raises(AttributeError):
        env.seq = 4  # still frozen


# -- fan_out on a real (inproc) ZeroMQ socket -------------------------------------------------------


@pytest.fixture
def pubsub():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    try:
        pub.bind("inproc://fanout-test")
        sub.connect("inproc://fanout-test")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        yield pub, sub
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()


def _env(channel, seq):
    return Envelope(channel, seq, "e", {"http-stream": {"action": "send", "content": b"%d" % seq}})


def test_fan_out_sends_live_channels_and_records_positions(twins, pubsub):
    pub, sub = pubsub
    envs = [_env("a", 1), _env("b", 1), _env("a", 2), _env("c", 1), _env("a", 3), _env("b", 2)]
    recent = {"z": ("old", 9), "a": ("old", 0)}
    assert twins.fan_out(pub, envs, {"a", "b"}, recent) == (5, 0)
    assert list(recent.items()) == [
        ("z", ("old", 9)),
        ("a", ("e", 3)),
        ("b", ("e", 2)),
        ("c", ("e", 1)),
    ]
    got = [sub.recv(zmq.NOBLOCK) for _ in range(5)]
    assert got == [wire.encode_envelope(e) for e in envs if e.channel != "c"]
    with pytest.raises(zmq.Again):
        sub.recv(zmq.NOBLOCK)
    assert twins.fan_out(pub, [], {"a"}, recent) == (0, 0)


@pytest.fixture
def blocked():
    """A PUSH socket without a peer: every NOBLOCK send would block."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        push.setsockopt(zmq.SNDHWM, 1)
        push.bind("inproc://fanout-block")
        yield push
    finally:
        push.close(linger=0)
        ctx.term()


def test_fan_out_counts_would_block(twins, blocked):
    recent = {}
    assert twins.fan_out(blocked, [_env("a", 1), _env("a", 2)], {"a"}, recent) == (0, 2)
    assert recent == {"a": ("e", 2)}


def test_fan_out_on_a_closed_socket_raises_like_pyzmq(twins):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.close()
    try:
        with pytest.raises(zmq.ZMQError):
            twins.fan_out(pub, [_env("a", 1)], {"a"}, {})
    finally:
        ctx.term()


# -- batches (wire version 4): the live frames of one step as few messages ---------------------


def _batch_of(frames):
    return wire.BATCH_TOPIC + b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def test_fan_out_batch_sends_the_live_frames_as_one_message(twins, pubsub):
    pub, sub = pubsub
    envs = [_env("a", 1), _env("b", 1), _env("a", 2), _env("c", 1), _env("a", 3), _env("b", 2)]
    recent = {}
    assert twins.fan_out(pub, envs, {"a", "b"}, recent, wire.BATCH_TOPIC) == (5, 0)
    assert recent == {"a": ("e", 3), "b": ("e", 2), "c": ("e", 1)}
    msg = sub.recv(zmq.NOBLOCK)
    frames = [wire.encode_envelope(e) for e in envs if e.channel != "c"]
    assert msg == _batch_of(frames)  # byte for byte
    with pytest.raises(zmq.Again):
        sub.recv(zmq.NOBLOCK)
    assert wire.split_batch(msg) == frames
    assert wire.split_batch(msg, {b"b"}) == frames[1::3]
    # one live frame: the plain frame, no batch around it; none: nothing
    assert twins.fan_out(pub, envs[3:5], {"a"}, recent, wire.BATCH_TOPIC) == (1, 0)
    assert sub.recv(zmq.NOBLOCK) == wire.encode_envelope(envs[4])
    assert twins.fan_out(pub, envs[3:4], {"a"}, recent, wire.BATCH_TOPIC) == (0, 0)
    with pytest.raises(zmq.Again):
        sub.recv(zmq.NOBLOCK)


@pytest.mark.parametrize("sizes", [[100, 100, 100], [10, 300, 10, 10], [300], [10, 10, 300]])
def test_fan_out_batch_closes_a_message_before_it_passes_batch_bytes(twins, pubsub, sizes):
    pub, sub = pubsub
    # each size in KiB: a message holds the frames that fit in BATCH_BYTES (256 KiB); a
    # bigger frame goes alone, plain
    envs = [
        Envelope("a", i + 1, "e", {"http-stream": {"content": b"x" * (k * 1024)}})
        for i, k in enumerate(sizes)
    ]
    frames = [wire.encode_envelope(e) for e in envs]
    assert twins.fan_out(pub, envs, {"a"}, {}, wire.BATCH_TOPIC) == (len(envs), 0)
    got = []
    while sub.poll(0):
        got.append(sub.recv())
    want, cur = [], []
    for f in frames:
        if cur and len(_batch_of(cur + [f])) > twins.BATCH_BYTES:
            want.append(cur)
            cur = []
        cur.append(f)
    want.append(cur)
    assert got == [g[0] if len(g) == 1 else _batch_of(g) for g in want]
    assert all(len(m) <= twins.BATCH_BYTES for m in got if wire.is_batch(m))
    assert wire.channel_frames(got) == frames


def test_fan_out_batch_counts_would_block_per_envelope(twins, blocked):
    envs = [_env("a", 1), _env("b", 1), _env("a", 2)]
    assert twins.fan_out(blocked, envs, {"a", "b"}, {}, wire.BATCH_TOPIC) == (0, 3)


class _Unpackable:
    pass


def test_fan_out_batch_sends_what_came_before_an_envelope_that_cannot_be_encoded(twins, pubsub):
    pub, sub = pubsub
    bad = Envelope("a", 3, "e", {"http-stream": {"content": _Unpackable()}})
    envs = [_env("a", 1), _env("a", 2), bad, _env("a", 4)]
    with pytest.raises(TypeError):
        twins.fan_out(pub, envs, {"a"}, {}, wire.BATCH_TOPIC)
    assert sub.recv(zmq.NOBLOCK) == _batch_of([wire.encode_envelope(e) for e in envs[:2]])
    with pytest.raises(zmq.Again):
        sub.recv(zmq.NOBLOCK)


def test_split_batch_refuses_a_cut_message_and_skips_what_is_not_wanted(twins):
    frames = [b"a\x00one", b"bb\x00two", b"nonul", b"", b"a\x00three"]
    msg = _batch_of(frames)
    at = len(wire.BATCH_TOPIC)
    assert twins.split_batch(msg, at, {b"a", b"nonul", b""}) == [
        frames[0],
        frames[2],
        frames[3],
        frames[4],
    ]
    assert twins.split_batch(msg, at, set()) == []
    assert twins.split_batch(msg, len(msg), {b"a"}) == []
    for cut in (at + 2, at + 4 + 3, len(msg) - 1):
        with pytest.raises(ValueError):
            twins.split_batch(msg[:cut], at, {b"a"})
    with pytest.raises(RemoteProtocolError):
        wire.split_batch(msg[:-1])


@given(st.lists(st.binary(max_size=40), max_size=8), st.data())
@SETTINGS
def test_split_batch_twins_agree(frames, data):
    msg = _batch_of(frames)
    shape = data.draw(st.sampled_from(["whole", "cut", "noise", "flipped"]))
    if shape == "cut":
        msg = msg[: data.draw(st.integers(0, len(msg)))]
    elif shape == "noise":  # anything after the topic: big lengths, lengths past the end
        msg = wire.BATCH_TOPIC + data.draw(st.binary(max_size=64))
    elif shape == "flipped" and len(msg) > len(wire.BATCH_TOPIC):
        at = data.draw(st.integers(len(wire.BATCH_TOPIC), len(msg) - 1))
        msg = msg[:at] + bytes([msg[at] ^ data.draw(st.integers(1, 255))]) + msg[at + 1 :]
    wanted = set(data.draw(st.lists(st.binary(max_size=3), max_size=4)))
    if shape == "whole":
        assert _speedups.twin("fanout", False).split_batch(msg, len(wire.BATCH_TOPIC), wanted) == [
            f for f in frames if f.split(b"\x00", 1)[0] in wanted
        ]
    outcomes = []
    for mod in _twins("fanout"):
        try:
            outcomes.append(mod.split_batch(msg, len(wire.BATCH_TOPIC), wanted))
        except ValueError:
            outcomes.append("ValueError")
    assert len(set(map(repr, outcomes))) == 1


# -- send_frames: many ready-made frames in one call (stats packets, trailing markers) ----------


def test_send_frames_sends_each_frame_as_one_message(twins, pubsub):
    pub, sub = pubsub
    frames = [b"message T3:a,b}", b"", b"x" * 70_000, wire.encode_marker("ch", "e", 7)]
    assert twins.send_frames(pub, frames) == (4, 0)
    assert [sub.recv(zmq.NOBLOCK) for _ in range(4)] == frames
    with pytest.raises(zmq.Again):
        sub.recv(zmq.NOBLOCK)
    assert twins.send_frames(pub, []) == (0, 0)


def test_send_frames_counts_would_block(twins, blocked):
    assert twins.send_frames(blocked, [b"a", b"b", b"c"]) == (0, 3)


def test_send_frames_on_a_closed_socket_raises_like_pyzmq(twins):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.close()
    try:
        with pytest.raises(zmq.ZMQError):
            twins.send_frames(pub, [b"a"])
    finally:
        ctx.term()


def test_recv_frames_reads_what_is_ready_up_to_the_limit(twins, pubsub):
    """The edges' SUB reader (``recv_frames``): each message as bytes, in order, at most
    ``limit`` a call, an empty list (not ``zmq.Again``) when nothing is ready."""
    pub, sub = pubsub
    frames = [b"ch\x00" + bytes([i % 256]) * i for i in range(300)] + [b"", b"x" * 70_000]
    for f in frames:
        pub.send(f)
    got: list[bytes] = []
    for _ in range(1000):  # inproc delivers at once; a few calls read it all
        got += twins.recv_frames(sub, 100)
        if len(got) >= len(frames):
            break
    assert got == frames
    assert twins.recv_frames(sub, 100) == []
    pub.send(b"one")
    for _ in range(1000):
        batch = twins.recv_frames(sub, 1)
        if batch:
            break
    assert batch == [b"one"]


def test_recv_frames_twins_agree(pubsub):
    pub, sub = pubsub
    frames = [wire.encode_marker(f"c{i}", "e", i) for i in range(50)]
    results = []
    for mod in _twins("fanout"):
        for f in frames:
            pub.send(f)
        got: list[bytes] = []
        while len(got) < len(frames):
            got += mod.recv_frames(sub, 7)
        results.append(got)
    assert results[0] == results[1] == frames


@pytest.mark.parametrize("name", ["recv_frames", "recv_single"])
def test_receiving_on_a_closed_socket_raises_like_pyzmq(twins, name):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB if name == "recv_frames" else zmq.PULL)
    sock.close()
    try:
        with pytest.raises(zmq.ZMQError):
            getattr(twins, name)(sock, 10)
    finally:
        ctx.term()


@pytest.fixture
def pushpull():
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        pull.bind("inproc://fanout-pull-test")
        push.connect("inproc://fanout-pull-test")
        yield push, pull
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def _read_single(mod, sock, want, limit):
    frames: list[bytes] = []
    multipart = 0
    for _ in range(1000):  # inproc delivers at once; a few calls read it all
        got, more = mod.recv_single(sock, limit)
        assert len(got) + more <= limit
        frames += got
        multipart += more
        if len(frames) + multipart >= want:
            break
    return frames, multipart


def test_recv_single_keeps_single_frames_and_counts_multipart(twins, pushpull):
    """The broker's PULL reader: single-frame messages as bytes, in order; a message of more
    than one frame read whole (its parts never show up as messages) and counted."""
    push, pull = pushpull
    push.send(b"J{}")
    push.send_multipart([b"a", b"b"])
    push.send(b"")
    push.send_multipart([b"c", b"d", b"e" * 70_000])
    push.send(b"x" * 70_000)
    assert _read_single(twins, pull, 5, 100) == ([b"J{}", b"", b"x" * 70_000], 2)
    assert twins.recv_single(pull, 100) == ([], 0)
    for i in range(10):  # the limit counts both kinds
        push.send_multipart([b"m", b"%d" % i]) if i % 3 == 0 else push.send(b"%d" % i)
    frames, multipart = _read_single(twins, pull, 10, 3)
    assert frames == [b"%d" % i for i in range(10) if i % 3] and multipart == 4


def test_recv_single_twins_agree(pushpull):
    push, pull = pushpull
    messages = [[b"%d" % i] if i % 4 else [b"%d" % i, b"more"] for i in range(60)]
    results = []
    for mod in _twins("fanout"):
        for m in messages:
            push.send_multipart(m)
        results.append(_read_single(mod, pull, len(messages), 7))
    assert results[0] == results[-1] == ([m[0] for m in messages if len(m) == 1], 15)


# -- decode_envelopes: the edge's reader, a batch of fan-out frames in one call ---------------

_ENV_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
)


@st.composite
def _fanout_frames(draw):
    """Fan-out frames: real envelopes, markers, and maps with any value at any key."""
    channel = draw(st.text(min_size=1, max_size=6).filter(lambda c: "\x00" not in c))
    kind = draw(st.sampled_from(["envelope", "marker", "map", "bytes"]))
    if kind == "envelope":
        env = Envelope(
            channel,
            draw(st.integers(0, 2**63 - 1)),
            draw(st.text(max_size=6)),
            {"http-stream": {"content": draw(st.text(max_size=6))}},
            draw(st.none() | st.text(max_size=4)),
            draw(st.none() | st.text(max_size=4)),
            draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
            draw(st.floats(0, 2e9)),
        )
        return wire.encode_envelope(env)
    if kind == "marker":
        return wire.encode_marker(channel, draw(st.text(max_size=6)), draw(st.integers(0, 99)))
    if kind == "map":
        keys = st.sampled_from(list(wire.ENVELOPE_FIELDS) + ["marker", "x"])
        m = draw(st.dictionaries(keys, _ENV_VALUES, max_size=8))
        return wire.topic(channel) + msgpack.packb(m, use_bin_type=True)
    return draw(st.binary(max_size=24))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_fanout_frames(), max_size=4))
def test_decode_envelopes_twins_agree_and_equal_the_wire(frames):
    """Both twins give the same list; each Envelope equals ``wire.decode_frame``'s, and every
    real envelope frame the broker writes is taken (None only for what the caller reads)."""
    results = [mod.decode_envelopes(frames, Envelope) for mod in _twins("fanout")]
    for other in results[1:]:
        assert other == results[0]
        assert [type(e) for e in other] == [type(e) for e in results[0]]
    for frame, env in zip(frames, results[0], strict=True):
        if env is not None:
            assert wire.decode_frame(frame) == env
            assert type(env.ts) is float


def test_decode_envelopes_takes_every_broker_frame_and_leaves_the_rest(twins):
    env = Envelope("ch", 3, "e1", {"ws-message": {"content": "x"}}, "id3", "id2", {"k": "v"}, 1.5)
    frames = [
        *wire.encode_envelopes([env, Envelope("é", 1, "e", {})]),
        wire.encode_marker("ch", "e1", 3),
        wire.encode_heartbeat("b", 1.0, 2.0, n=1),
        b"no separator",
        b"\x00starts with NUL",
        b"ch\x00\xc1",
        b"\xff\x00\x80",  # bad UTF-8 channel
        wire.topic("ch") + msgpack.packb({"seq": True, "epoch": "e", "formats": {}, "meta": {}}),
    ]
    got = twins.decode_envelopes(frames, Envelope)
    assert got[:2] == [env, Envelope("é", 1, "e", {})]
    assert got[2:] == [None] * 7


def _strict(v):
    """``v`` with every float, int and bool told apart (``==`` takes 1 == 1.0 == True and
    0.0 == -0.0): what "the same value" means for two decoders."""
    if isinstance(v, dict):
        return ("d", [(_strict(k), _strict(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("l", [_strict(x) for x in v])
    if isinstance(v, float):
        return ("f", v.hex())
    return (type(v).__name__, v)


def _env_strict(e):
    if e is None:
        return None
    return [
        _strict(getattr(e, f))
        for f in ("channel", "seq", "epoch", "formats", "id", "prev_id", "meta", "ts")
    ]


_MP_EDGES = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
_MP_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-70000, 70000),  # every width up to int32 / uint32, both signs
    st.sampled_from(_MP_EDGES + [-1 - e for e in _MP_EDGES[:-2]] + [-32, -33, -(2**63)]),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.text(min_size=250, max_size=300),  # str8 and str16
    st.binary(max_size=40),
    st.binary(min_size=250, max_size=300),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
)
_MP_KEY = st.one_of(st.text(max_size=30), st.binary(max_size=3), st.integers(0, 3))
_MP_VALUE = st.recursive(
    _MP_LEAF,
    lambda kids: st.one_of(
        st.lists(kids, max_size=18), st.dictionaries(_MP_KEY, kids, max_size=18)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    formats=st.dictionaries(st.text(max_size=12), _MP_VALUE, max_size=3),
    meta=st.dictionaries(st.text(max_size=4), _MP_VALUE, max_size=2),
    extra=st.dictionaries(st.sampled_from(["x", "marker", "seq", "y" * 40]), _MP_LEAF, max_size=2),
    ts=st.one_of(st.floats(0, 2e9), st.integers(0, 2**40)),
    single_float=st.booleans(),
    cut=st.integers(0, 400),
    flip=st.tuples(st.integers(0, 400), st.integers(0, 255)),
    depth=st.integers(0, 40),
)
def test_decode_envelopes_reads_every_value_as_msgpack_does(
    formats, meta, extra, ts, single_float, cut, flip, depth
):
    """The compiled reader gives exactly what ``msgpack.unpackb`` gives (the pure twin), value
    for value and type for type, for any content in ``formats`` and ``meta`` (nesting, big
    strings, bytes, ext types, keys that are not strings), for bodies cut short, with a byte
    changed or a byte too many, and for nesting deeper than its own limit."""
    nested = "leaf"
    for _ in range(depth):
        nested = [nested]
    m = {
        "seq": 5,
        "epoch": "ep",
        "formats": formats,
        "id": "i5",
        "prev_id": None,
        "meta": {**meta, "deep": nested},
        "ts": ts,
        **extra,
    }
    try:
        body = msgpack.packb(m, use_bin_type=True, use_single_float=single_float)
    except OverflowError:  # a double past float32's range, packed single
        body = msgpack.packb(m, use_bin_type=True)
    frame = b"ch\x00" + body
    pos, byte = flip
    flipped = bytearray(frame)
    flipped[3 + pos % len(body)] = byte
    frames = [frame, frame[: 3 + cut % len(body)], frame + b"\x00", bytes(flipped)]
    results = [
        [_env_strict(e) for e in mod.decode_envelopes(frames, Envelope)] for mod in _twins("fanout")
    ]
    for other in results[1:]:
        assert other == results[0]


def test_decode_envelopes_every_msgpack_type(twins):
    """One value of every type and width msgpack writes (each int width at its edges, both
    signs; float32 and float64; str and bin at each length class; arrays and maps of 15, 16
    and 65,536 elements; an ext type), read back equal to ``msgpack.unpackb``'s, type for
    type."""
    ints = [
        *_MP_EDGES,
        *(-1 - e for e in _MP_EDGES[:-2]),
        -32,
        -33,
        -128,
        -129,
        -32768,
        -32769,
        -(2**31),
        -(2**31) - 1,
        -(2**63),
        -200,
        -40000,
    ]
    values = [
        None,
        True,
        False,
        *ints,
        0.5,
        -0.0,
        1e300,
        float("inf"),
        "",
        "é" * 10,
        "x" * 31,
        "x" * 32,
        "x" * 255,
        "x" * 256,
        "x" * 65536,
        b"",
        b"\x00" * 255,
        b"b" * 256,
        b"b" * 65536,
        list(range(15)),
        list(range(16)),
        list(range(65536)),
        {str(i): i for i in range(15)},
        {str(i): i for i in range(16)},
        {str(i): i for i in range(65536)},
        [[[["deep"]]]],
        {"k": {"k": {"k": []}}},
    ]
    meta = {f"v{i}": v for i, v in enumerate(values)}
    m = {"seq": 2**63 - 1, "epoch": "e", "formats": {"f": values}, "meta": meta, "ts": 7}
    small = {**m, "formats": {"f": [v for v in values if v != 1e300]}, "meta": {}}
    frames = [
        b"ch\x00" + msgpack.packb(m, use_bin_type=True),
        b"ch\x00" + msgpack.packb(small, use_bin_type=True, use_single_float=True),
    ]
    frames.append(b"ch\x00" + msgpack.packb({**m, "meta": {"x": msgpack.ExtType(5, b"e")}}))
    for frame in frames:
        want = msgpack.unpackb(frame[3:])
        (got,) = twins.decode_envelopes([frame], Envelope)
        assert _env_strict(got) == _env_strict(
            Envelope(
                "ch", want["seq"], "e", want["formats"], None, None, want["meta"], float(want["ts"])
            )
        )


def test_decode_envelopes_keys_and_map_sizes(twins):
    """Envelope maps of 16 keys and more (map16), keys repeated (the last wins), keys longer
    than the reader's key cache, and many different keys in turn (its slots replaced)."""
    base = {"seq": 1, "epoch": "e", "formats": {}, "meta": {}, "ts": 1.0}
    maps = [
        {**base, **{f"k{i}": i for i in range(20)}},
        {**base, "k" * 30: 1, "é" * 10: 2},
        *({**base, "formats": {f"fmt{i}-{'x' * (i % 25)}": {"content": "c"}}} for i in range(200)),
    ]
    frames = [b"ch\x00" + msgpack.packb(m, use_bin_type=True) for m in maps]
    # a repeated key: written by hand (a dict cannot hold one)
    frames.append(
        b"ch\x00\x86\xa3seq\x01\xa3seq\x02\xa5epoch\xa1e\xa7formats\x80\xa4meta\x80\xa2ts\x01"
    )
    got = twins.decode_envelopes(frames, Envelope)
    want = [Envelope("ch", 1, "e", m["formats"], None, None, {}, 1.0) for m in maps]
    assert got[: len(maps)] == want
    assert got[-1] == Envelope("ch", 2, "e", {}, None, None, {}, 1.0)


# -- message_packets: the broker's "message" stats packets --------------------------------------

_stat_names = st.text(min_size=1, max_size=12)
_transport_names = st.sampled_from(["http-stream", "http-response", "ws-message", "other", "é"])


@SETTINGS
@given(
    envs=st.lists(
        st.builds(
            Envelope,
            channel=_stat_names,
            seq=st.integers(1, 10),
            epoch=st.just("e"),
            formats=st.dictionaries(_transport_names, st.just({}), max_size=4),
            id=st.none() | st.text(max_size=12),
        ),
        max_size=8,
    ),
    live=st.sets(_stat_names, max_size=6),
    subs=st.dictionaries(
        st.tuples(st.sampled_from(["stream", "response", "ws", ""]), _stat_names),
        st.integers(0, 10**12),
        max_size=10,
    ),
    chan_subs=st.sets(_stat_names, max_size=6),
    head=st.binary(max_size=20),
)
def test_message_packets_twins_agree(envs, live, subs, chan_subs, head):
    # channels of the envelopes are live half the time (most random names are not)
    live = live | {e.channel for e in envs[::2]}
    outs = []
    for mod in _twins("fanout"):
        cache: dict[str, bytes] = {}
        got = mod.message_packets(envs, live, subs, {c: 1 for c in chan_subs}, head, cache)
        again = mod.message_packets(envs, live, subs, {c: 1 for c in chan_subs}, head, cache)
        assert again == got  # the transport cache changes nothing
        outs.append(got)
    assert all(o == outs[0] for o in outs)


# -- first_topic / first_none: the edge's checks for its usual batch ---------------------------


@SETTINGS
@given(
    frames=st.lists(
        st.one_of(st.binary(max_size=4), st.just(b""), st.just(b"\x00hb\x00"), st.none()),
        max_size=6,
    )
)
def test_first_topic_and_first_none(frames):
    """``first_topic``: the first frame that is not bytes or starts with the separator, else
    -1; ``first_none``: the first None by identity (never an element's ``__eq__``)."""
    want_topic = next(
        (i for i, f in enumerate(frames) if type(f) is not bytes or f[:1] == b"\x00"), -1
    )
    want_none = next((i for i, f in enumerate(frames) if f is None), -1)
    for mod in _twins("fanout"):
        assert mod.first_topic(frames) == want_topic
        assert mod.first_none(frames) == want_none


class _EqualsAll:
    def __eq__(self, other):
        raise AssertionError("compared")

    __hash__ = object.__hash__


def test_first_none_compares_by_identity():
    for mod in _twins("fanout"):
        assert mod.first_none([_EqualsAll(), _EqualsAll()]) == -1
        assert mod.first_none([_EqualsAll(), None]) == 1
