"""``procs.descendants`` finds the whole process tree, children of every thread included
(trio's ``open_process``, which ``gripcast run`` uses, starts children from a worker thread)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from bench.procs import descendants, stop_group

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

# a child that starts a grandchild from a thread that stays alive, and one from a thread that
# ends; then prints both pids and waits
CHILD = r"""
import subprocess, sys, threading
kids = []
hold = threading.Event()
def spawn(keep):
    kids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    if keep:
        hold.wait()
t1 = threading.Thread(target=spawn, args=(True,), daemon=True); t1.start()
while len(kids) < 1: pass
t2 = threading.Thread(target=spawn, args=(False,)); t2.start(); t2.join()
print(*[k.pid for k in kids], flush=True)
sys.stdin.read()
"""


def test_descendants_include_children_of_every_thread():
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))
        reader.start()
        reader.join(20)
        grandchildren = [int(x) for x in line[0].split()]
        assert len(grandchildren) == 2
        tree = descendants(proc.pid)
        assert tree[0] == proc.pid
        assert set(grandchildren) <= set(tree)
        assert len(tree) == 3
    finally:
        stop_group(proc, timeout=5)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def test_a_reserved_port_is_not_handed_out_twice_until_its_reservation_is_stale(
    tmp_path, monkeypatch
):
    from bench import procs

    monkeypatch.setattr(procs, "PORT_RESERVE_DIR", str(tmp_path))
    assert procs.reserve_port(23456, now=1000.0)
    assert not procs.reserve_port(23456)  # another process (or this one) asks again: refused
    os.utime(tmp_path / "23456", (0, 0))  # the holder is long gone
    assert procs.reserve_port(23456)  # taken over
    assert not procs.reserve_port(23456)
