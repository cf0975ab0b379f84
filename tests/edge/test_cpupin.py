"""``edge.cpupin`` (``edge_cpu_affinity``): which CPU an edge takes, and what pinning does to the
calling thread and the listeners (in a thread of its own: the test process stays unpinned)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from edge import cpupin
from edge.cpupin import SO_INCOMING_CPU, choose_cpu


def test_choose_cpu_goes_round_the_allowed_cpus_in_order():
    assert [choose_cpu(i, {5, 1, 3}) for i in range(5)] == [1, 3, 5, 1, 3]
    assert choose_cpu(0, {0}) == 0 and choose_cpu(7, {0}) == 0
    assert choose_cpu(0, set()) is None


linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")


def _in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
            out["affinity"] = os.sched_getaffinity(0)
        except BaseException as exc:  # (re-raised in the test's thread)
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out


def _listener() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


@pytest.mark.integration
@linux_only
def test_pin_binds_the_calling_thread_and_steers_the_listeners():
    allowed = sorted(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    listeners = [_listener(), _listener()]
    try:
        for index in range(len(allowed) + 1):  # (the last one wraps round)
            out = _in_thread(lambda index=index: cpupin.pin(index, listeners))
            want = allowed[index % len(allowed)]
            assert out["value"] == want
            assert out["affinity"] == {want}  # that thread, and only that one
            for s in listeners:
                assert s.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU) == want
        assert os.sched_getaffinity(0) == before  # this thread was never moved
    finally:
        for s in listeners:
            s.close()


@pytest.mark.integration
@linux_only
def test_a_refused_pin_is_logged_and_leaves_the_edge_unpinned(monkeypatch, caplog):
    def refuse(pid, cpus):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    s = _listener()
    try:
        assert cpupin.pin(0, [s]) is None
        assert s.getsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU) == -1  # untouched
    finally:
        s.close()
    assert "could not pin edge 0" in caplog.text
