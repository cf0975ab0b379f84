"""The floor proxies under the connection rate (``connrate --target floor``: bench/connfloor.c,
bench/connfloor_py.py, bench/connfloor_trio.py): real processes and sockets in front of the
bench's own origin."""

from __future__ import annotations

import shutil
import socket

import pytest

from bench.cli import build_parser
from bench.connfloor import FloorTarget
from bench.origin import Origin

from .benchrun import run_bench

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"
    ),
]


def _get(port: int, path: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
    got = b""
    while b"\r\n\r\n" not in got or (b"[open]" not in got and b"502" not in got[:12]):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return s, got


def test_the_flags():
    args = build_parser().parse_args(["connrate", "--target", "floor", "--floor", "python"])
    assert (args.target, args.floor) == ("floor", "python")
    assert build_parser().parse_args(["connrate"]).floor == "c"
    with pytest.raises(ValueError):
        FloorTarget(1, 1, "rust")


@pytest.mark.parametrize("lang", ["c", "python", "trio"])
@pytest.mark.timeout(60)
def test_it_holds_streams_the_origin_holds_and_refuses_the_rest(lang):
    origin = Origin().start()
    floor = FloorTarget(origin.port, 2, lang)
    try:
        floor.start()
        workers = floor.pids()
        assert len(workers) == 2 and floor.proc is not None and floor.proc.pid not in workers
        held = []
        for i in range(50):  # over both workers; one origin connection serves many clients
            s, got = _get(floor.client_port, f"/stream/c{i}")
            assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
            assert b"Transfer-Encoding: chunked" in got and got.endswith(b"7\r\n[open]\n\r\n")
            held.append(s)
        for s in held[:25]:  # held: nothing more comes, the connection stays open
            s.settimeout(0.05)
            with pytest.raises(TimeoutError):
                s.recv(1)
        for s in held:  # closed by the client: the workers go on
            s.close()
        s, got = _get(floor.client_port, "/nothing")  # the origin's 404: not a GRIP hold
        assert got.startswith(b"HTTP/1.1 502"), got
        s.close()
        s, got = _get(floor.client_port, "/stream/after")
        assert got.endswith(b"[open]\n\r\n")
        s.close()
        assert floor.pids() == workers
    finally:
        floor.stop()
        origin.stop()
    assert floor.pids() == []


@pytest.mark.parametrize("lang", ["c", "python", "trio"])
@pytest.mark.timeout(120)
def test_connrate_against_the_floor(tmp_path, lang):
    record, proc = run_bench(
        tmp_path / "floor.json",
        "connrate", "--target", "floor", "--floor", lang, "--conns", "400", "--procs", "2",
        "--window", "8", "--repeat", "1", "--client", "c",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (result,) = record["results"]
    assert result["target"] == "floor"
    (row,) = result["rows"]
    assert (row["connections"], row["failed"]) == (400, 0)
    # the workers are the server (400 connections are below /proc's CPU resolution to weigh)
    assert row["edge_cpu_s_per_1000"] == row["server_cpu_s_per_1000"]
    assert sorted(row["processes"]) == ["floor", "origin"]
