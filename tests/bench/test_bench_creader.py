"""The client workers' C reader (bench/creader.c) counts exactly what the Python reader
(swarm.dechunk or swarm.deframe + Worker.consume) counts, whatever the split of the bytes; what
both read of one client in a step adds up (merge_seen / Worker.absorb).  Bodies are mostly fed
in; a WebSocket client's pongs and ends go over a socketpair, and one small WebSocket fanout runs
against a real gripcast."""

from __future__ import annotations

import random
import select
import shutil
import socket
import time

import pytest

from _speedups import ws_frame
from bench import creader
from bench.swarm import (
    BODY,
    HEAD,
    PONG_MASK,
    Worker,
    WorkerConfig,
    dechunk,
    deframe,
    merge_seen,
    pong_frame,
)

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


def sse(seq: int, t: float, pad: str = "") -> bytes:
    return f"id: {seq}\ndata: M{seq} {t:.6f}{pad}\n\n".encode()


def stream(seq: int, t: float, pad: str = "") -> bytes:
    return f"M{seq} {t:.6f}{pad}\n".encode()


def cfg(**kw) -> WorkerConfig:
    base = dict(index=0, port=1, transport="sse", first=0, last=3, channels=3, max_seq=40)
    base.update(kw)
    return WorkerConfig(**base)


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 20, 64, 500))
        out.append(data[i : i + n])
        i += n
    return out


def python_read(w: Worker, idx: int, reads: list[tuple[bytes, float]]) -> bool:
    c = w.clients[idx]
    c.mode, c.state = "chunked", BODY
    for data, now in reads:
        payload, ended = dechunk(c, data)
        if payload:
            w.consume(c, payload, now)
        if ended:
            return True
    return False


def c_read(r: creader.CReader, slot: int, reads, chunk: bool | str = True) -> int:
    r.adopt(slot, -1, chunk, 0, 0, False)
    for data, now in reads:
        got = r.feed(slot, data, now)
        if got:
            return got
    return 0


def body_of(kind: str, seqs: list[int], rng: random.Random) -> list[bytes]:
    """Messages as the targets send them (several to a chunk at times), probes first."""
    make = sse if kind == "sse" else stream
    probe = b"id: p1\ndata: P1\n\n" if kind == "sse" else b"P1\n"
    msgs = [probe, probe.replace(b"1", b"2")]
    for s in seqs:
        pad = " " + "x" * rng.choice((0, 10, 200)) if rng.random() < 0.3 else ""
        msgs.append(make(s, 1000.0 + s * 0.01, pad.rstrip()))
    parts, i = [], 0
    while i < len(msgs):
        k = rng.choice((1, 1, 2, 3))
        parts.append(b"".join(msgs[i : i + k]))
        i += k
    return parts


def same_counts(r: creader.CReader, w: Worker) -> tuple[int, int, int]:
    """Client 1's reads counted alike by the C reader ``r`` and the Python worker ``w``
    (deliveries, 2 stale, late, 1 probe, latencies, seen, cursor); (deliveries, cursor, probe)."""
    st = r.take_stats()
    hist: dict = {}
    late_hist: dict = {}
    r.take_hist(hist, late_hist)
    assert st.deliveries == w.deliveries
    assert st.stale == w.stale == 2
    assert st.late == w.late
    assert st.probed == w.probed == 1
    assert st.max_lat == pytest.approx(w.max_lat)
    assert hist == w.hist
    assert late_hist == w.late_hist
    assert r.seen(1, 32) == bytes(w.clients[1].seen)
    last, probe, probed = r.release(1)
    assert (last, probe, probed) == (w.clients[1].last, w.clients[1].probe, True)
    return st.deliveries, last, probe


@pytest.mark.parametrize("kind", ["sse", "stream"])
@pytest.mark.parametrize("seed", range(6))
def test_c_reader_counts_what_python_counts(kind, seed):
    rng = random.Random(seed)
    seqs = [3, 4, 5, 5, 7, 1, 2, 8, 30, 9]  # base 2: 1 and 2 are stale, 5 twice, 30 late
    raw = chunked(body_of(kind, seqs, rng))
    times = [1000.02 + 0.05 * i for i in range(4)] + [1010.0]  # the last read: late (> 5 s)
    pieces = splits(raw, rng)
    reads = [
        (p, times[min(i * len(times) // len(pieces), len(times) - 1)]) for i, p in enumerate(pieces)
    ]

    w = Worker(cfg(transport=kind), None)
    w.start_step(1000.0, 2, 30)
    python_read(w, 1, reads)

    r = creader.CReader(3, 5.0)
    r.step(2, 30)
    r.set_t0(1000.0)
    assert c_read(r, 1, reads) == 0
    deliveries, last, _ = same_counts(r, w)
    assert deliveries == len(seqs) - 2  # - stale
    assert last == 30


def test_c_reader_raw_framing_and_the_end_of_a_chunked_stream():
    r = creader.CReader(2, 5.0)
    r.step(0, 5)
    r.set_t0(10.0)
    # no chunked framing (HTTP/1.0 or a close-delimited body): lines as they come
    assert c_read(r, 0, [(b"M1 10.0", 10.5), (b"00000\nM2 10.1\n", 10.5)], chunk=False) == 0
    assert r.take_stats().deliveries == 2
    assert r.seen(0, 7) == b"\x00\x01\x01\x00\x00\x00\x00"
    # the last chunk ends the stream; a bad size line is a framing error
    assert c_read(r, 1, [(chunked([b"M3 10.0\n"]) + b"0\r\n\r\n", 10.1)]) == 1
    assert c_read(r, 1, [(b"zz\r\n", 10.1)]) == -1


def test_a_probe_after_a_message_does_not_move_the_cursor():
    r = creader.CReader(1, 5.0)
    r.step(0, 5)
    c_read(r, 0, [(chunked([b"P3\n", b"M1 1.0\n", b"P4\n"]), 1.0)])
    assert r.release(0) == (1, 3, True)


def test_merge_seen_adds_both_readers_counts():
    assert merge_seen(bytearray(4), b"\x00\x01\x02\x00") == bytearray(b"\x00\x01\x02\x00")
    assert merge_seen(bytearray(b"\x00\x01\x00\x00\x01"), b"\x00\x01\xff\x00") == bytearray(
        b"\x00\x02\xff\x00\x01"
    )
    assert merge_seen(bytearray(b"\x00\x01"), b"") == bytearray(b"\x00\x01")


def test_a_worker_reports_what_both_readers_saw_of_a_client():
    """A reconnect's first message comes with the response head (read by the worker), the rest
    through the C reader: the report counts each once, nothing lost, nothing duplicated."""
    w = Worker(cfg(creader=True), None)
    assert w.cr is not None
    w.start_step(0.0, 0, 4)
    w.command(("t0", 100.0))
    c = w.clients[0]
    w.consume(c, sse(1, 100.0), 100.01)
    slot = 0
    w.cr.adopt(slot, -1, True, c.last, c.probe, c.probed)
    c.held = True
    assert w.cr.feed(slot, chunked([sse(2, 100.0), sse(3, 100.0), sse(4, 100.0)]), 100.02) == 0
    w.cr.feed(1, b"", 100.0)
    w.cr.adopt(1, -1, True, 0, 0, False)
    w.cr.feed(1, chunked([sse(1, 100.0), sse(2, 100.0), sse(2, 100.0)]), 100.03)
    rep = w.report({"c0": 4, "c1": 4, "c2": 4})
    assert w.deliveries == 7
    assert sum(rep["hist"].values()) == 7
    assert rep["lost"] == 2 + 4  # c1 lost 3 and 4; c2 saw nothing
    assert rep["dup"] == 1  # c1 saw 2 twice
    assert rep["clients_with_loss"] == 2
    w.take_back(c)
    assert (c.last, c.held) == (4, False)


def test_build_says_what_to_do_without_gcc(tmp_path, monkeypatch):
    src = tmp_path / "creader.c"
    src.write_text(creader.SOURCE.read_text() + "\n/* another version */\n")
    monkeypatch.setattr(creader, "SOURCE", src)
    monkeypatch.setattr(creader.shutil, "which", lambda name: None)
    with pytest.raises(creader.CReaderError, match="gcc"):
        creader.build()


@pytest.mark.parametrize("transport", ["sse", "stream", "ws", "longpoll"])
def test_the_publishers_item_text_is_format_item(transport):
    """The publisher writes items as JSON text by one string format: the same item."""
    import json

    from bench.publisher import format_item, item_json, padding

    for pad in ("", padding(300)):
        text = item_json(transport, "c7", 12, 1234.5678901, pad)
        assert json.loads(text) == format_item(transport, "c7", 12, 1234.5678901, pad)


def test_run_returns_when_the_workers_own_epoll_has_an_event():
    """The worker's loop waits in the C reader, which polls the worker's epoll too."""
    import os
    import select

    r = creader.CReader(1, 5.0)
    ep = select.epoll()
    rfd, wfd = os.pipe()
    try:
        ep.register(rfd, select.EPOLLIN)
        assert r.run(ep.fileno(), 0) == []  # nothing ready, no wait
        os.write(wfd, b"x")
        assert r.run(ep.fileno(), 60000) == []  # returns at once: the worker has an event
    finally:
        ep.close()
        os.close(rfd)
        os.close(wfd)


def test_the_last_batch_sent_just_before_a_whole_second_is_on_time():
    from bench.scenarios import on_time_last_second

    assert on_time_last_second(4.996) == 5  # received in second 5: within 1 s of the end
    assert on_time_last_second(8.0) == 8
    assert on_time_last_second(8.002) == 8  # not 9: a late second's deliveries stay out


# --- WebSocket frames ---------------------------------------------------------------------


def ws_msg(seq: int, t: float, pad: str = "") -> bytes:
    return f"M{seq} {t:.6f}{pad}".encode()  # as the publisher's ws-message: no newline


def unmask_pongs(data: bytes) -> list[bytes]:
    """The payloads of the client pong frames in ``data`` (each must be a masked pong)."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 == 0x8A and b1 & 0x80, data[pos : pos + 2]  # FIN pong, masked
        size, pos = b1 & 0x7F, pos + 2
        if size == 126:
            size, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif size == 127:
            size, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        mask, pos = data[pos : pos + 4], pos + 4
        out.append(bytes(b ^ mask[i % 4] for i, b in enumerate(data[pos : pos + size])))
        pos += size
    return out


def ws_body(seqs: list[int], rng: random.Random) -> bytes:
    """Frames as a server sends them: probes, then messages with 7-bit, 16-bit and 64-bit
    lengths, binary ones, one fragmented (with a ping between its fragments), a message of two
    lines, an empty one, pings, pongs and a masked frame between them."""
    frames = [ws_frame(1, b"P1"), ws_frame(1, b"P2"), ws_frame(9, b"hb")]
    for i, s in enumerate(seqs):
        t = 1000.0 + s * 0.01
        pad = " " + "x" * rng.choice((0, 10, 200, 70000)) if rng.random() < 0.3 else ""
        text = ws_msg(s, t, pad.rstrip())
        if i == 3:  # fragmented: text, a ping, continuation, continuation with FIN
            frames += [
                ws_frame(1, text[:3], fin=False),
                ws_frame(9, b"mid"),
                ws_frame(0, text[3:8], fin=False),
                ws_frame(0, text[8:]),
            ]
        elif i == 9:  # two messages' lines in one (a newline between)
            frames.append(ws_frame(1, text + b"\n" + ws_msg(s, t)))
        else:
            frames.append(ws_frame(2 if i % 4 == 1 else 1, text))
        if i == 2:
            frames += [ws_frame(9, b""), ws_frame(10, b"pong"), ws_frame(1, b"")]
        if i == 6:  # masked (servers do not mask: the mask skipped, the payload left as it is)
            frames.append(ws_frame(1, b"M77 1.5", mask_key=b"\x01\x02\x03\x04"))
        if i == 7:
            frames.append(ws_frame(9, b"p" * 125))
    return b"".join(frames)


def python_read_ws(w: Worker, idx: int, reads: list[tuple[bytes, float]]) -> list[bytes]:
    """What the Python reader counts of those reads; the pings it found."""
    c = w.clients[idx]
    c.mode, c.state = "ws", BODY
    pings: list[bytes] = []
    for data, now in reads:
        payload, ended = deframe(c, data, pings)
        if payload:
            w.consume(c, payload, now)
        assert not ended
    return pings


@pytest.mark.parametrize("seed", range(6))
def test_c_reader_counts_websocket_frames_as_python_does(seed):
    rng = random.Random(seed)
    seqs = [3, 4, 5, 5, 7, 1, 2, 8, 30, 9, 10, 11]  # base 2: 1 and 2 stale, 5 twice, 30 late
    raw = ws_body(seqs, rng)
    times = [1000.02 + 0.05 * i for i in range(4)] + [1010.0]  # the last read: late (> 5 s)
    pieces = splits(raw, rng)
    if seed % 2:  # reads of any size too: whole frames, several in one
        pieces = [b"".join(pieces[i : i + 40]) for i in range(0, len(pieces), 40)]
    reads = [
        (p, times[min(i * len(times) // len(pieces), len(times) - 1)]) for i, p in enumerate(pieces)
    ]

    w = Worker(cfg(transport="ws"), None)
    w.start_step(1000.0, 2, 30)
    pings = python_read_ws(w, 1, reads)
    assert pings == [b"hb", b"", b"mid", b"p" * 125]

    r = creader.CReader(3, 5.0)
    r.step(2, 30)
    r.set_t0(1000.0)
    assert c_read(r, 1, reads, chunk="ws") == 0
    deliveries, last, probe = same_counts(r, w)
    assert deliveries == len(seqs) + 1 - 2  # + the two-line message, - stale
    assert (last, probe) == (30, 2)


def test_websocket_lengths_split_inside_the_header():
    """16-bit and 64-bit lengths, each frame cut at every byte of its header."""
    for size in (125, 126, 65535, 65536, 70000):
        text = ws_msg(1, 10.0) + b" " + b"x" * (size - len(ws_msg(1, 10.0)) - 1)
        frame = ws_frame(1, text) + ws_frame(1, ws_msg(2, 10.0))
        for cut in range(1, 15):
            r = creader.CReader(1, 5.0)
            r.step(0, 5)
            assert c_read(r, 0, [(frame[:cut], 10.1), (frame[cut:], 10.1)], chunk="ws") == 0
            assert r.take_stats().deliveries == 2, (size, cut)
            assert r.seen(0, 4) == b"\x00\x01\x01\x00"


def test_websocket_close_frame_ends_the_stream():
    r = creader.CReader(2, 5.0)
    r.step(0, 5)
    close = ws_frame(8, b"\x03\xe8")
    reads = [(ws_frame(1, ws_msg(1, 10.0)) + close[:1], 10.1), (close[1:], 10.1)]
    assert c_read(r, 0, reads, chunk="ws") == 1
    assert r.take_stats().deliveries == 1
    # what follows a close frame in the same read is not read
    assert c_read(r, 1, [(close + ws_frame(1, ws_msg(2, 10.0)), 10.1)], chunk="ws") == 1
    assert r.take_stats().deliveries == 0
    with pytest.raises(ValueError):
        r.adopt(0, -1, "h2", 0, 0, False)


def test_pong_frame_is_a_masked_pong():
    for payload in (b"", b"hello", b"q" * 125, b"z" * 300):
        frame = pong_frame(payload)
        assert frame == ws_frame(10, payload, mask_key=PONG_MASK)
        assert unmask_pongs(frame) == [payload]


def test_c_reader_answers_pings_with_pongs_on_the_socket():
    """On a real socket: pings (one split in its header, one in its payload) between messages
    come back as masked pongs of the same payload, the bytes the Python worker sends; a close
    frame closes the client, as does the server's EOF."""
    r = creader.CReader(2, 5.0)
    r.step(0, 10)
    ep = select.epoll()
    a0, b0 = socket.socketpair()
    a1, b1 = socket.socketpair()
    try:
        for s in (a0, a1):
            s.setblocking(False)
        r.adopt(0, a0.fileno(), "ws", 0, 0, False)
        r.adopt(1, a1.fileno(), "ws", 0, 0, False)
        payload = bytes(range(90))
        ping = ws_frame(9, payload)
        sends = [
            ws_frame(1, ws_msg(1, time.time())) + ws_frame(9, b"hello") + ping[:1],
            ping[1:7],  # the header whole, 5 payload bytes (the pong's mask goes on from there)
            ping[7:50],
            ping[50:] + ws_frame(9, b"") + ws_frame(1, ws_msg(2, time.time())),
        ]
        for data in sends:
            b0.sendall(data)
            assert r.run(ep.fileno(), 200) == []
        want = pong_frame(b"hello") + pong_frame(payload) + pong_frame(b"")
        got = b""
        b0.settimeout(2.0)
        while len(got) < len(want):
            got += b0.recv(4096)
        assert unmask_pongs(got) == [b"hello", payload, b""]
        assert got == want  # the bytes the Python worker sends
        assert r.take_stats().deliveries == 2
        assert r.seen(0, 4) == b"\x00\x01\x01\x00"

        b0.sendall(ws_frame(1, ws_msg(3, time.time())) + ws_frame(8, b"\x03\xe8"))
        assert r.run(ep.fileno(), 1000) == [0]  # the close frame: slot 0 given back
        assert r.release(0) == (3, 0, False)
        b1.sendall(ws_frame(1, b"P4"))
        b1.close()  # EOF
        closed: list[int] = []
        for _ in range(10):
            closed += r.run(ep.fileno(), 200)
            if closed:
                break
        assert closed == [1]
        assert r.release(1) == (0, 4, True)
    finally:
        ep.close()
        for s in (a0, b0, a1, b1):
            s.close()


def test_a_websocket_worker_hands_over_after_the_101():
    """A ``ws`` worker with the C reader: the 101 head is read in Python, the frames that came
    with it and after it in C (pongs answered there); the report says the C reader read them."""
    w = Worker(cfg(transport="ws", creader=True, last=1, channels=1, max_seq=10), None)
    assert w.cr is not None
    w.start_step(0.0, 0, 5)
    w.command(("t0", time.time()))
    c = w.clients[0]
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        c.sock, c.fd, c.state, c.hs = a, a.fileno(), HEAD, True
        w.inflight = 1
        w.by_fd[c.fd] = c
        w.ep.register(c.fd, select.EPOLLIN)
        head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        b.sendall(head + ws_frame(1, b"P1") + ws_frame(1, ws_msg(1, time.time()))[:3])
        w.on_readable(c, time.time())
        assert c.held and c.state == BODY and w.connected == 1
        b.sendall(ws_frame(1, ws_msg(1, time.time()))[3:] + ws_frame(9, b"hi"))
        b.sendall(ws_frame(1, ws_msg(2, time.time())))
        for _ in range(5):
            w.run_c(50)
        b.settimeout(2.0)
        assert b.recv(100) == pong_frame(b"hi")
        rep = w.report({"c0": 2})
        assert rep["lost"] == rep["dup"] == 0
        assert rep["c_deliveries"] == w.deliveries == 2
        assert w.probed == 1
        b.sendall(ws_frame(8, b""))
        for _ in range(20):
            w.run_c(50)
            if not c.held:
                break
        assert not c.held and c.sock is None and w.drops == 1  # reconnected as a stream's end
        assert c.last == 2
    finally:
        a.close()
        b.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_websocket_fanout_with_the_c_reader_gripcast(tmp_path):
    """200 WebSocket clients against a real gripcast, read by the workers' C readers: every
    delivery arrived, and the C readers read them all (``by_c_reader``)."""
    from tests.bench.benchrun import gripcast_run

    run, proc = gripcast_run(
        tmp_path / "ws-c.json",
        *("fanout", "--transport", "ws", "--clients", "200", "--rate", "5", "--duration", "3"),
        *("--target", "gripcast", "--reader", "c"),
    )
    assert run["config"]["transport"] == "ws" and run["config"]["creader"]
    assert run["connect"]["connected"] == 200
    d = run["deliveries"]
    assert d["expected"] == 200 * run["publish"]["per_channel"] > 0
    assert d["received"] == d["expected"]
    assert d["by_c_reader"] == d["received"]  # the C readers read every one
    assert run["loss"]["lost"] == run["loss"]["duplicated"] == 0, run["loss"]
    assert proc.returncode == 0, proc.stderr[-3000:]
