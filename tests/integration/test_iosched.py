"""``zmq_io_batch``: the broker's and the edges' libzmq I/O threads under SCHED_BATCH, read
from /proc of the real processes (broker.runtime.iosched)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.runtime.iosched import io_thread_ids
from tests.integration.cluster import Cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies"),
]


def _policies(pid: int) -> dict[str, int]:
    tasks = Path(f"/proc/{pid}/task")
    out = {}
    for tid in io_thread_ids(tasks):
        out[(tasks / str(tid) / "comm").read_text().strip()] = os.sched_getscheduler(tid)
    out["main"] = os.sched_getscheduler(pid)
    return out


@pytest.mark.parametrize("batch", [True, False])
def test_io_threads_policy_in_broker_and_edge(tmp_path, batch):
    with Cluster(tmp_path, ["* 127.0.0.1:9"], zmq_io_batch=batch) as cluster:
        for proc in (cluster.broker, cluster.edge_procs[0]):
            policies = _policies(proc.proc.pid)
            io = {k: v for k, v in policies.items() if k != "main"}
            assert io, policies  # the process has its I/O thread(s) running
            want = os.SCHED_BATCH if batch else os.SCHED_OTHER
            assert set(io.values()) == {want}, policies
            assert policies["main"] == os.SCHED_OTHER  # the main thread is never moved
