"""The client workers' C reader (bench/creader.c) counts exactly what the Python reader
(swarm.dechunk + Worker.consume) counts, whatever the split of the bytes; what both read of one
client in a step adds up (merge_seen / Worker.absorb).  No sockets: bodies are fed in."""

from __future__ import annotations

import random
import shutil

import pytest

from bench import creader
from bench.swarm import BODY, Worker, WorkerConfig, dechunk, merge_seen

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


def c_read(r: creader.CReader, slot: int, reads, chunk: bool = True) -> int:
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
