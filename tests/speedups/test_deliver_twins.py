"""``send_plain`` (one message to many sessions, one pass each), both twins, with real socket
pairs for the sends; the edge's own tests (tests/edge/test_deliver.py) run the whole
``Deliverer`` on it."""

from __future__ import annotations

import errno
import random
import socket
from typing import Any

import pytest

from _speedups import twin
from edge.sessionstate import CLOSING, DEAD, DONE, OPEN

FRAME = b"\x81\x02hi"


def _core() -> type:
    """The compiled ``SessionCore`` when it is built (both twins take its subclasses; the
    compiled one takes nothing else), else the pure one."""
    try:
        return twin("deliver", True).SessionCore
    except ImportError:
        return twin("deliver", False).SessionCore


class Stream(_core()):  # type: ignore[misc]
    __slots__ = ("tag",)

    def __init__(self, tag: str, fd: int, chunked: bool = True, state: Any = OPEN) -> None:
        super().__init__()
        self.tag, self.fd, self.chunked, self.state = tag, fd, chunked, state
        self.filters: dict[str, tuple[str, ...]] = {}
        self.buf = bytearray()

    def __repr__(self) -> str:
        return self.tag


class Ws(Stream):
    __slots__ = ()

    def __init__(self, tag: str, fd: int, deflate: bool = False, state: Any = OPEN) -> None:
        super().__init__(tag, fd, state=state)
        self.deflate = deflate


class Crypt:
    """What send_plain uses of a TLS session's ``edge.tlsconn.TlsConn``."""

    def __init__(self, fail: bool = False) -> None:
        self.out = bytearray()
        self.fail = fail

    def encrypt(self, data: bytes) -> bytes:
        if self.fail:
            raise ValueError("broken")
        return b"E(" + data + b")"


class Poll:
    state = OPEN

    def __repr__(self) -> str:
        return "poll"


@pytest.fixture
def pairs():
    made: list[socket.socket] = []

    def make(sndbuf: int | None = None, peer_closed: bool = False) -> tuple[int, socket.socket]:
        a, b = socket.socketpair()
        a.setblocking(False)
        if sndbuf:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        made.extend((a, b))
        if peer_closed:
            b.close()
        return a.fileno(), b

    yield make
    for s in made:
        s.close()


def _run(mod: Any, members: list[Any], start: int = 0, stop: int = 100, **kw: Any) -> Any:
    built: list[Any] = []

    def frame_fn(msg: Any) -> bytes:
        built.append(msg)
        return FRAME

    args: dict[str, Any] = dict(
        chunk=b"2\r\nhi\r\n", raw=b"hi", wsmsg={"content": "hi"}, gate=None, pending={}
    )
    args.update(kw)
    others: list[Any] = []
    short: list[Any] = []
    delivered, nbytes, frame = mod.send_plain(
        members,
        start,
        stop,
        "c",
        "cur-7",
        "ENV",
        args["gate"],
        args["chunk"],
        args["raw"],
        args["wsmsg"],
        frame_fn,
        Stream,
        Ws,
        args["pending"],
        5.0,
        others,
        short,
    )
    return delivered, nbytes, frame, len(built), others, short


def test_send_plain_sends_plain_sessions_and_leaves_the_others(twins, pairs):
    fd, r_open = pairs()
    fd_raw, r_raw = pairs()
    fd_ws, r_ws = pairs()
    fd_other, r_other = pairs()
    fd_spare, r_spare = pairs()
    s_open, s_raw = Stream("s_open", fd), Stream("s_raw", fd_raw, chunked=False)
    s_closing = Stream("s_closing", fd_spare, state=CLOSING)
    s_track = Stream("s_track", fd_spare)
    s_track.track = object()
    s_filtered = Stream("s_filtered", fd_spare)
    s_filtered.filters = {"c": ("skip-self",)}
    s_other_ch = Stream("s_other_ch", fd_other)  # a filter on another channel: still plain
    s_other_ch.filters = {"d": ("skip-self",)}
    s_gated = Stream("s_gated", fd_spare)
    fd_tls, r_tls = pairs()
    s_tls = Stream("s_tls", fd_tls)
    s_tls.crypt = Crypt()
    s_tls_queued = Stream("s_tls_queued", fd_spare)  # ciphertext waiting: behind it
    s_tls_queued.crypt = Crypt()
    s_tls_queued.crypt.out += b"E(earlier)"
    s_tls_broken = Stream("s_tls_broken", fd_spare)
    s_tls_broken.crypt = Crypt(fail=True)
    s_busy = Stream("s_busy", fd_spare)
    s_busy.writing = True
    s_backlog = Stream("s_backlog", fd_spare)
    s_backlog.buf += b"x"
    w_open, w_deflate = Ws("w_open", fd_ws), Ws("w_deflate", fd_spare, deflate=True)
    w_done = Ws("w_done", fd_spare, state=DONE)
    w_dead = Ws("w_dead", fd_spare, state=DEAD)
    members = [
        s_open,
        s_raw,
        s_closing,
        s_track,
        s_filtered,
        s_other_ch,
        s_gated,
        s_tls,
        s_tls_queued,
        s_tls_broken,
        s_busy,
        s_backlog,
        w_open,
        w_deflate,
        w_done,
        w_dead,
        Poll(),
    ]
    held: list[Any] = []
    pending: dict[Any, list[bytes]] = {s_backlog: [b"earlier"]}
    delivered, nbytes, frame, built, others, short = _run(
        twins, members, gate={(s_gated, "c"): held}, pending=pending
    )
    assert (delivered, nbytes) == (5, 7 + 2 + 7 + 10 + len(FRAME))
    assert frame == FRAME and built == 1  # one frame for every plain WebSocket
    assert r_open.recv(100) == b"2\r\nhi\r\n" and r_raw.recv(100) == b"hi"
    assert r_other.recv(100) == b"2\r\nhi\r\n" and r_ws.recv(100) == FRAME
    assert r_tls.recv(100) == b"E(2\r\nhi\r\n)"  # TLS: encrypted once, then sent
    assert [repr(s) for s in others] == [
        "s_closing",
        "s_track",
        "s_filtered",
        "w_deflate",
        "w_done",
        "w_dead",
        "poll",
    ]
    assert held == ["ENV"] and short == []
    # a backlog, queued ciphertext, a taken socket, a failed encryption: queued for
    # write_many as plaintext, after what was there
    assert {repr(k): v for k, v in pending.items()} == {
        "s_backlog": [b"earlier", b"2\r\nhi\r\n"],
        "s_tls_queued": [b"2\r\nhi\r\n"],
        "s_tls_broken": [b"2\r\nhi\r\n"],
        "s_busy": [b"2\r\nhi\r\n"],
    }
    assert s_tls_queued.crypt.out == b"E(earlier)"
    for s in (s_open, s_raw, s_other_ch, w_open, s_tls, s_tls_queued, s_busy, s_backlog):
        assert s.cursors() == {"c": "cur-7"}
    for s in (s_closing, s_track, s_filtered, s_gated, w_deflate, w_done):
        assert s.cursors() == {}
    assert (s_open.sent, s_open.last_out, w_open.sent) == (7, 5.0, len(FRAME))
    assert (s_tls.sent, s_tls.last_out) == (10, 5.0)  # the ciphertext's bytes
    assert (s_tls_queued.sent, s_tls_queued.last_out) == (0, 0.0)
    with pytest.raises(BlockingIOError):
        r_spare.setblocking(False)
        r_spare.recv(100)  # nothing was sent on the others' socket


def test_send_plain_short_and_failed_sends_are_left_to_the_caller(twins, pairs):
    fd_full, _ = pairs(sndbuf=4096)
    fd_gone, _ = pairs(peer_closed=True)
    full, gone = Stream("full", fd_full), Stream("gone", fd_gone)
    big = b"z" * (4 << 20)
    delivered, nbytes, frame, built, others, short = _run(twins, [full, gone], chunk=big, raw=big)
    assert (delivered, nbytes, frame, built, others) == (0, 0, None, 0, [])
    assert [(repr(s), d is big) for s, d, _ in short] == [("full", True), ("gone", True)]
    assert 0 < short[0][2] < len(big)
    assert short[1][2] in (-errno.EPIPE, -errno.ECONNRESET)
    assert full.sent == 0 and full.last_out == 0.0  # not counted: the caller buffers it
    assert full.cursors() == {"c": "cur-7"}  # the bytes are the session's either way


def test_send_plain_without_stream_or_ws_content_touches_nothing(twins, pairs):
    fd, r = pairs()
    members = [Stream("s", fd), Ws("w", fd)]
    delivered, nbytes, frame, built, others, short = _run(twins, members, chunk=None, wsmsg=None)
    assert (delivered, nbytes, frame, built, short) == (0, 0, None, 0, [])
    assert others == members and members[0].cursors() == {}


def test_send_plain_takes_only_its_slice(twins, pairs):
    conns, readers = [], []
    for i in range(5):
        fd, r = pairs()
        conns.append(Stream(f"c{i}", fd))
        readers.append(r)
    assert _run(twins, conns, 1, 3)[:2] == (2, 14)
    assert _run(twins, conns, 4, 99)[:2] == (1, 7)
    assert _run(twins, conns, -3, 0)[:2] == (0, 0)
    assert [c.sent for c in conns] == [0, 7, 7, 0, 7]
    assert readers[1].recv(10) == b"2\r\nhi\r\n" and readers[4].recv(10) == b"2\r\nhi\r\n"


def test_send_plain_twins_agree(pairs):
    """The same random mix of sessions through both twins: the same results."""
    rng = random.Random(11)
    results = []
    for compiled in (False, True):
        rng.seed(11)
        members: list[Any] = []
        for i in range(60):
            fd, _ = pairs()
            kind = rng.choice(["stream", "raw", "ws", "deflate", "closing", "filtered", "poll"])
            if kind == "poll":
                members.append(Poll())
                continue
            s: Any = (
                Ws(f"m{i}", fd, deflate=kind == "deflate")
                if kind in ("ws", "deflate")
                else (Stream(f"m{i}", fd, chunked=kind != "raw"))
            )
            if kind == "closing":
                s.state = CLOSING
            if kind == "filtered":
                s.filters = {"c": ("skip-self",)}
            members.append(s)
        got = _run(twin("deliver", compiled), members, 5, 50)
        results.append(
            (
                got[:4],
                [repr(s) for s in got[4]],
                [
                    (getattr(m, "sent", None), m.cursors() if hasattr(m, "cursors") else None)
                    for m in members
                ],
            )
        )
    assert results[0] == results[1]


def test_send_plain_sends_any_bytes_like_ciphertext(twins, pairs):
    class ArrayCrypt(Crypt):
        def encrypt(self, data: bytes) -> bytes:
            return bytearray(b"E(" + data + b")")  # type: ignore[return-value]

    fd, r = pairs()
    s = Stream("s", fd)
    s.crypt = ArrayCrypt()
    assert _run(twins, [s, Stream("t", fd)])[:2] == (2, 10 + 7)
    assert r.recv(100) == b"E(2\r\nhi\r\n)2\r\nhi\r\n"


def test_session_core_twins_have_the_same_fields_and_defaults(twins):
    core = twins.SessionCore()
    assert (core.state, core.track, core.filters, core.crypt) == (None,) * 4
    assert (core.cursor_ch, core.cursor_at, core.cursor_more, core.cursors()) == (None,) * 3 + ({},)
    assert (core.buf, core.deflate, core.sent, core.last_out, core.fd) == (None, None, 0, 0.0, 0)
    assert (core.chunked, core.writing) == (False, False)
    core.sent += 7
    core.last_out = 2.5
    core.writing = True
    assert (core.sent, core.last_out, core.writing) == (7, 2.5, True)
    with pytest.raises(AttributeError):
        core.other = 1  # no __dict__: the sessions stay as small as with slots


def test_send_plain_compiled_takes_only_session_core_classes(pairs):
    try:
        mod = twin("deliver", True)
    except ImportError:
        pytest.skip("the compiled twins are not built (pip install . builds them)")

    class Plain:
        pass

    with pytest.raises(TypeError, match="SessionCore"):
        mod.send_plain(
            [], 0, 0, "c", "1", None, None, b"", b"", None, bytes, Plain, Ws, {}, 0.0, [], []
        )


def test_session_core_cursors(twins):
    """The first channel's cursor in two fields, the others' in a dict made when needed."""
    core = twins.SessionCore()
    assert core.cursor_of("a") is None
    core.set_cursor("a", "1")
    assert (core.cursor_ch, core.cursor_at, core.cursor_more) == ("a", "1", None)
    core.set_cursor("".join(["a"]), "2")  # an equal string, not the same object
    core.set_cursor("b", "7")
    core.set_cursor("c", "8")
    core.set_cursor("b", "9")
    assert (core.cursor_at, core.cursor_more) == ("2", {"b": "9", "c": "8"})
    assert [core.cursor_of(c) for c in "abcd"] == ["2", "9", "8", None]
    got = core.cursors()
    assert list(got.items()) == [("a", "2"), ("b", "9"), ("c", "8")]
    got["a"] = "changed"  # a copy: the session's own cursors stay
    assert core.cursor_of("a") == "2"


def test_send_plain_sets_a_second_channels_cursor(twins, pairs):
    fd, r = pairs()
    s = Stream("s", fd)
    s.set_cursor("other", "o-1")  # the first channel: send_plain's "c" goes to the dict
    assert _run(twins, [s])[:2] == (1, 7)
    assert s.cursors() == {"other": "o-1", "c": "cur-7"}
