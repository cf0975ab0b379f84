"""``python -m bench connrate``: its flags (no sockets), and its client driver against a small
real server that answers some connections and leaves others hanging (the measurement itself
runs real targets and is in bench/RESULTS.md, not in the suite)."""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from bench import connload, connrate, corigin
from bench.cli import build_parser


def test_flags():
    args = build_parser().parse_args(
        ["connrate", "--target", "pushpin", "--conns", "50", "--window", "8", "--channels", "3"]
    )
    assert (args.target, args.conns, args.window, args.channels) == ("pushpin", 50, 8, 3)
    assert not args.no_stats
    assert build_parser().parse_args(["connrate", "--no-stats"]).no_stats
    d = build_parser().parse_args(["connrate"])
    assert (d.target, d.conns, d.procs, d.window, d.repeat, d.order) == (
        "both",
        10000,
        4,
        64,
        2,
        "gripcast-first",
    )


def _serve(listener: socket.socket, answer_every: int, stop: threading.Event, got: list) -> None:
    """Answer every ``answer_every``-th request with a stream head and ``[open]``; leave the
    others open and silent."""
    conns = []
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = listener.accept()
        except TimeoutError:
            continue
        conns.append(c)
        req = c.recv(4096)
        got.append(req)
        if len(got) % answer_every == 0:
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n[open]\n\r\n")
    for c in conns:
        c.close()


@contextlib.contextmanager
def _stream_server(answer_every: int) -> Iterator[tuple[int, list]]:
    """A ``_serve`` thread on a free port: (the port, the requests it got); stopped on exit."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop, got = threading.Event(), []
    server = threading.Thread(target=_serve, args=(listener, answer_every, stop, got), daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1], got
    finally:
        stop.set()
        server.join(5)
        listener.close()


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize("headers", ["minimal", "browser"])
def test_client_holds_answered_connections_and_fails_hanging_ones(monkeypatch, headers):
    monkeypatch.setattr(connrate, "STALL_S", 0.5)
    with _stream_server(2) as (port, got):
        ctx = multiprocessing.get_context("fork")
        start, close = ctx.Event(), ctx.Event()
        parent, child = ctx.Pipe(duplex=False)
        job = connrate.ClientJob(port, 10, 4, 3, 0, "127.0.0.2", "normal", h := _headers(headers))
        start.set()  # the driver runs in a thread of this process, not in a worker process
        t = threading.Thread(target=connrate._client, args=(job, start, child, close), daemon=True)
        t.start()
        r = parent.recv()
        close.set()
        assert parent.recv() == "closed"
        t.join(5)
    assert (r["held"], r["failed"]) == (5, 5)  # every second one answered, the rest waited out
    assert len(r["done_at"]) == 5
    # the channels spread as asked: cr0, cr1, cr2, cr0, ...
    paths = sorted({req.split(b" ")[1] for req in got})
    assert paths == [b"/stream/cr0", b"/stream/cr1", b"/stream/cr2"]
    assert set(got) == {connrate.request_bytes(i, 3, h) for i in range(3)}


def _headers(name: str) -> bytes:
    h = connrate.HEADER_SETS[name]
    assert name == "minimal" or h.count(b"\r\n") == 15  # (browser: 15 header lines)
    return h


def test_headers_flag():
    assert build_parser().parse_args(["connrate"]).headers == "minimal"
    assert build_parser().parse_args(["connrate", "--headers", "browser"]).headers == "browser"


needs_cc = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"
)


def test_client_flag():
    assert build_parser().parse_args(["connrate"]).client == "python"
    assert build_parser().parse_args(["connrate", "--client", "c"]).client == "c"


def _open_fds_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:``port`` on this machine (/proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            remote, state = parts[2], parts[3]
            if state == "01" and int(remote.split(":")[1], 16) == port:
                n += 1
    return n


@needs_cc
@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("headers", ["minimal", "browser"])
def test_c_client_holds_answered_connections_until_told_and_fails_hanging_ones(
    monkeypatch, headers
):
    monkeypatch.setattr(connrate, "STALL_S", 1.0)
    h = _headers(headers)
    with _stream_server(2) as (port, got):
        jobs = [connrate.ClientJob(port, 10, 4, 3, 0, "127.0.0.2", "normal", h)]
        copies = connrate._c_clients(connload.build(), jobs)
        try:
            assert not got  # nothing before the start byte
            copies[0].stdin.write(b"g")
            copies[0].stdin.flush()
            r = connrate._c_result(copies[0])
            # the answered ones are still open (held) after the report: 5 established
            assert _open_fds_to(port) == 5
            copies[0].communicate(timeout=30)  # stdin's end: it closes them and exits
            assert copies[0].returncode == 0
        finally:
            for cp in copies:
                cp.kill()
    assert (r["held"], r["failed"]) == (5, 5)  # every second one answered, the rest timed out
    assert len(r["done_at"]) == 5 and all(t > 0 for t in r["done_at"])
    assert r["cpu_s"] >= 0 and r["wall_s"] > 0
    paths = sorted({req.split(b" ")[1] for req in got})
    assert paths == [b"/stream/cr0", b"/stream/cr1", b"/stream/cr2"]
    # the C client sends the Python client's bytes
    assert set(got) == {connrate.request_bytes(i, 3, h) for i in range(3)}


@pytest.mark.parametrize("flag, module", [("--client", connload), ("--origin", corigin)])
def test_c_helper_without_a_compiler_is_a_clear_error(monkeypatch, capsys, flag, module):
    """``--client c`` (bench/connload.c) and ``--origin c`` (bench/corigin.c) without gcc."""

    def no_cc():
        raise connload.BuildError("bench's helper needs a C compiler (apt-get install gcc)")

    monkeypatch.setattr(module, "build", no_cc)
    args = build_parser().parse_args(["connrate", flag, "c", "--target", "gripcast"])
    args.argv = []
    assert connrate.main(args) == 2
    assert "apt-get install gcc" in capsys.readouterr().out


@needs_cc
def test_connload_hold_needs_a_plain_request_and_a_count():
    binary = connload.build()
    for extra in ([], ["--request", "GET / HTTP/1.1\\r\\n\\r\\n"], ["--conns", "3"]):
        argv = [binary, "--port", "9", "--hold", *extra]
        if extra == ["--conns", "3"]:
            argv += ["--mode", "tls1.3", "--request", "GET / HTTP/1.1\\r\\n\\r\\n"]
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
        assert p.returncode == 2, (extra, p.stderr)
        assert "--hold needs" in p.stderr


def test_edge_affinity_option_reaches_gripcast_only(monkeypatch):
    assert build_parser().parse_args(["connrate"]).edge_affinity is False
    seen = {}

    def fake_make_target(kind, *a, env=None, **kw):
        seen[kind] = env
        raise RuntimeError("stop here")  # (only what it was asked for matters)

    class FakeOrigin:
        pid, port = 1, 9

        def stop(self):
            pass

    monkeypatch.setattr(connrate, "make_origin", lambda kind: FakeOrigin())
    monkeypatch.setattr(connrate, "make_target", fake_make_target)
    args = build_parser().parse_args(["connrate", "--edge-affinity"])
    for kind in ("gripcast", "pushpin"):
        with pytest.raises(RuntimeError):
            connrate.run_target(kind, args)
    assert seen == {"gripcast": {"GRIPCAST_EDGE_CPU_AFFINITY": "true"}, "pushpin": None}


def test_warmup_rounds_option():
    assert build_parser().parse_args(["connrate"]).warmup_rounds == 0
    assert build_parser().parse_args(["connrate", "--warmup-rounds", "1"]).warmup_rounds == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args(["connrate", "--warmup-rounds", "-1"])


def test_warmup_rounds_are_run_and_not_counted(monkeypatch):
    """Each target runs --warmup-rounds rounds more, first, and reports only the counted ones."""
    calls = []

    class FakeTarget:
        def start(self):
            pass

        def stop(self):
            pass

    class FakeOrigin:
        pid = 1
        port = 9

        def stop(self):
            pass

    def fake_round(*a, **kw):
        calls.append(len(calls))
        return {
            "connections": 10,
            "failed": 0,
            "per_s": 100.0 + len(calls),
            "per_s_to_90pct": 90.0,
            "server_cpu_s_per_1000": 0.1,
            "edge_cpu_s_per_1000": 0.1,
            "origin_cpu_s_per_1000": 0.01,
            "client_cpu_s_per_1000": 0.01,
            "server_close_cpu_s_per_1000": 0.01,
            "processes": {},
            "loadavg": (0.0, 0.0, 0.0),
        }

    monkeypatch.setattr(connrate, "make_origin", lambda kind: FakeOrigin())
    monkeypatch.setattr(connrate, "make_target", lambda *a, **kw: FakeTarget())
    monkeypatch.setattr(connrate, "warm_up", lambda *a, **kw: None)
    monkeypatch.setattr(connrate, "run_round", fake_round)
    args = build_parser().parse_args(
        ["connrate", "--target", "gripcast", "--repeat", "2", "--warmup-rounds", "1"]
    )
    lines: list[str] = []
    out = connrate.run_target("gripcast", args, log=lines.append)
    assert len(calls) == 3  # one warm-up round, two counted
    assert [r["round"] for r in out["rows"]] == [0, 1]
    assert [r["per_s"] for r in out["rows"]] == [102.0, 103.0]  # not the warm-up's
    assert all(r["warmup_rounds"] == 1 for r in out["rows"])
    assert "warm-up round" in lines[0] and "not counted" in lines[0]
