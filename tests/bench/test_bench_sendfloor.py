"""``bench sendfloor`` (the kernel's cost of one loopback send(), bench/sendfloor.c) and the
client workers' ``--client-sched``: real processes and sockets, a small run."""

from __future__ import annotations

import multiprocessing
import os
import shutil

import pytest

from bench import sendfloor
from bench.cli import build_parser
from bench.swarm import apply_sched

from .benchrun import run_bench

needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"
)


def test_split_and_check():
    assert sendfloor.split(10, 3) == [4, 3, 3]
    assert sum(sendfloor.split(10000, 7)) == 10000
    assert sendfloor.check(10000, 2, 4, 1.0, 20.0) == []
    problems = "\n".join(sendfloor.check(0, 2, 1, 0.0, 5.0))
    for part in ("--readers", "--conns", "--rate"):
        assert part in problems
    assert "18,000" in "\n".join(sendfloor.check(40000, 2, 4, 1.0, 1.0))


def test_the_fanout_scenarios_take_a_client_sched():
    args = build_parser().parse_args(["fanout", "--client-sched", "batch"])
    assert args.client_sched == "batch"
    assert build_parser().parse_args(["fanout"]).client_sched == "normal"
    assert build_parser().parse_args(["sendfloor"]).client_sched == "both"


def _policy_after(policy: str, q) -> None:
    try:
        apply_sched(policy)
        q.put(os.sched_getscheduler(0))
    except ValueError as exc:
        q.put(str(exc))


@pytest.mark.parametrize(
    "policy,want",
    [("batch", os.SCHED_BATCH), ("normal", os.SCHED_OTHER), ("rt", "normal or batch")],
)
def test_apply_sched_sets_the_workers_policy(policy, want):
    # in a process of its own, as a client worker: the test process keeps its policy
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_policy_after, args=(policy, q))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    if isinstance(want, str):
        assert want in got
    else:
        assert got == want


@needs_gcc
def test_a_small_run_sends_to_every_connection_and_reports_the_cost(tmp_path):
    record, proc = run_bench(
        tmp_path / "sf.json",
        "sendfloor",
        "--conns", "300", "--senders", "2", "--readers", "2",
        "--rate", "4", "--duration", "1", "--repeat", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = record["rows"]
    assert sorted(r["sched"] for r in rows) == ["batch", "normal"]
    for r in rows:
        assert not r["errors"] and r["failed"] == 0
        # 4 ticks a second for 1 s to 300 connections: every send whole (the readers read all)
        assert r["sends"] + r["short"] >= 300 * 4 * 0.75 and r["short"] == 0
        assert r["us_per_send"] > 0 and r["cpu_s"] > 0
        assert len(r["senders"]) == 2
    assert set(record["median_us_per_send"]) == {"batch", "normal"}
    assert "us per send" in proc.stdout
