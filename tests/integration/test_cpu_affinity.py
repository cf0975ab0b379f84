"""``edge_cpu_affinity``: two real edges, each pinned to its own CPU (read from /proc), serve
held streams on their shared port; off, they are left free (edge.cpupin)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, Origin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity"),
]


def _cpus(pid: int) -> set[int]:
    """The CPUs the process's main thread may run on (``Cpus_allowed_list``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            out: set[int] = set()
            for part in line.split(":", 1)[1].strip().split(","):
                lo, _, hi = part.partition("-")
                out.update(range(int(lo), int(hi or lo) + 1))
            return out
    raise AssertionError("no Cpus_allowed_list")


def _stream(_req):
    return (
        200,
        {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": "c"},
        b"[open]\n",
    )


def _held(port: int, n: int) -> list[socket.socket]:
    """``n`` stream requests, each held open once its head and first line arrived."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        got = b""
        while b"[open]" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 ")
        socks.append(s)
    return socks


@pytest.mark.parametrize("on", [True, False])
def test_edges_pinned_one_cpu_each_and_serving(tmp_path, on):
    allowed = sorted(os.sched_getaffinity(0))
    with Origin({"/s": _stream}) as origin:
        with Cluster(
            tmp_path, [f"* 127.0.0.1:{origin.port}"], edges=2, edge_cpu_affinity=on
        ) as cluster:
            pinned = [_cpus(p.proc.pid) for p in cluster.edge_procs]
            if on:
                assert pinned == [{allowed[i % len(allowed)]} for i in range(2)]
            else:
                assert pinned == [set(allowed)] * 2
            socks = _held(cluster.ports["client_port"], 20)  # served on the shared port
            for s in socks:
                s.close()
