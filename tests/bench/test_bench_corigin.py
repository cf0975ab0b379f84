"""``bench.corigin``: the C origin answers every request with the bytes ``bench.origin.respond``
gives (a real process on 127.0.0.1; skipped without a C compiler)."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest

from bench import connrate
from bench.cli import build_parser
from bench.corigin import COrigin
from bench.origin import respond

needs_cc = pytest.mark.skipif(
    not (shutil.which("gcc") or shutil.which("cc")), reason="no C compiler"
)

REQUESTS = [
    b"GET /stream/abc HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /sse/c1?x=1 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 4\r\n\r\n",
    b"GET /lp/q HTTP/1.1\r\n\r\n",
    b"GET /nope HTTP/1.1\r\n\r\n",
    b"GET /stream/a/b HTTP/1.1\r\n\r\n",
    b"GET /stream/ HTTP/1.1\r\n\r\n",
    b"POST /ws/w?prev=7&z=1 HTTP/1.1\r\nContent-Length: 6\r\n\r\nOPEN\r\n",
    b"POST /ws/w HTTP/1.1\r\ncontent-length: 16\r\n\r\nTEXT 2\r\nhi\r\n\r\n\r\n",
    b"POST /ws/w HTTP/1.1\r\nCONTENT-LENGTH:  7\r\n\r\nCLOSE\r\n",
]


def _expected(req: bytes) -> bytes:
    head, _, body = req.partition(b"\r\n\r\n")
    return respond(head.split(b" ")[1], None, False, body)


def _read(sock: socket.socket, n: int, timeout_s: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


@needs_cc
def test_c_origin_answers_as_the_python_origin_pipelined_and_split():
    o = COrigin().start()
    try:
        want = b"".join(_expected(r) for r in REQUESTS)
        with socket.create_connection(("127.0.0.1", o.port)) as s:  # all at once, pipelined
            s.sendall(b"".join(REQUESTS))
            assert _read(s, len(want)) == want
        with socket.create_connection(("127.0.0.1", o.port)) as s:  # a byte at a time
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for r in REQUESTS[:2] + REQUESTS[6:7]:
                for i in range(len(r)):
                    s.sendall(r[i : i + 1])
                    time.sleep(0.0005)
                exp = _expected(r)
                assert _read(s, len(exp)) == exp
    finally:
        o.stop()
    assert o.proc is not None and o.proc.returncode == 0  # SIGTERM: a clean exit


@needs_cc
def test_c_origin_closes_an_oversized_head():
    o = COrigin().start()
    try:
        with socket.create_connection(("127.0.0.1", o.port)) as s:
            s.sendall(b"GET /stream/a HTTP/1.1\r\nX: " + b"a" * (70 * 1024))
            try:
                got = _read(s, 1)
            except ConnectionResetError:  # (closed with the rest of the head unread)
                got = b""
            assert got == b""  # closed, nothing answered
    finally:
        o.stop()


def test_connrate_origin_option():
    assert build_parser().parse_args(["connrate"]).origin == "python"
    assert build_parser().parse_args(["connrate", "--origin", "c"]).origin == "c"


@needs_cc
@pytest.mark.integration
@pytest.mark.timeout(180)
def test_connrate_through_gripcast_to_the_c_origin(tmp_path):
    """The whole scenario with the C origin and clients against a real gripcast (broker and
    one edge): every connection is held, the warm-up round is not counted."""
    out = tmp_path / "cr.json"
    args = build_parser().parse_args(
        [
            "connrate",
            "--target",
            "gripcast",
            "--edges",
            "1",
            "--conns",
            "200",
            "--procs",
            "2",
            "--window",
            "8",
            "--repeat",
            "1",
            "--warmup-rounds",
            "1",
            "--client",
            "c",
            "--origin",
            "c",
            "--out",
            str(out),
        ]
    )
    args.argv = []
    assert connrate.main(args) == 0
    rows = json.loads(out.read_text())["results"][0]["rows"]
    assert len(rows) == 1  # the warm-up round is not among them
    row = rows[0]
    assert (row["connections"], row["failed"]) == (200, 0)
    assert row["origin"] == "c" and row["warmup_rounds"] == 1
    assert row["per_s"] > 0 and row["origin_cpu_s_per_1000"] >= 0
