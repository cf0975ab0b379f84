"""The slow scenario's split of the clients: slow readers in client workers of their own (their
trickle reads must not delay the fast clients' reads and timestamps), the same accounting as
when they are mixed in (cut, resumed, received, lost, duplicated).  No sockets: the plan, the
workers' client sets and the report merging."""

from __future__ import annotations

import pytest

from bench.cli import build_parser, load_config
from bench.scenarios import WORKER_MAX_CONNS, _slow_group, loadgen_roles, worker_plan
from bench.swarm import Worker, WorkerConfig, role_clients


def _held(plan, slow_every):
    return {
        role: sorted(i for a, b, r in plan if r == role for i in role_clients(a, b, slow_every, r))
        for role in ("all", "fast", "slow")
    }


def test_slow_readers_get_workers_of_their_own():
    plan = worker_plan(10000, 4, slow_every=10)
    assert [r for _, _, r in plan] == ["fast"] * 4 + ["slow"]
    held = _held(plan, 10)
    assert held["fast"] == [i for i in range(10000) if i % 10]
    assert held["slow"] == list(range(0, 10000, 10))
    assert held["all"] == []


def test_mixed_layout_is_the_old_one():
    plan = worker_plan(10000, 4, slow_every=10, slow_apart=False)
    assert plan == [
        (0, 2500, "all"),
        (2500, 5000, "all"),
        (5000, 7500, "all"),
        (7500, 10000, "all"),
    ]
    assert worker_plan(10000, 4) == plan  # no slow readers: the same as mixed
    assert _held(plan, 10)["all"] == list(range(10000))


def test_many_slow_readers_spread_over_several_slow_workers():
    plan = worker_plan(40000, 3, slow_every=1)  # every client slow: no fast worker at all
    assert {r for _, _, r in plan} == {"slow"}
    sizes = [len(role_clients(a, b, 1, r)) for a, b, r in plan]
    assert len(plan) == 3 and max(sizes) <= WORKER_MAX_CONNS and sum(sizes) == 40000
    plan = worker_plan(100, 3, slow_every=7)  # ranges that do not start on a slow reader
    held = _held(plan, 7)
    assert held["slow"] == list(range(0, 100, 7))
    assert sorted(held["fast"] + held["slow"]) == list(range(100))


def test_role_workers_hold_only_their_clients():
    fast = Worker(WorkerConfig(0, 1, "sse", 0, 20, 1, 10, slow_every=5, role="fast"), None)
    slow = Worker(WorkerConfig(1, 1, "sse", 0, 20, 1, 10, slow_every=5, role="slow"), None)
    mixed = Worker(WorkerConfig(2, 1, "sse", 0, 20, 1, 10, slow_every=5), None)
    assert [c.idx for c in fast.clients] == [i for i in range(20) if i % 5]
    assert not any(c.slow for c in fast.clients) and fast.slow_clients == []
    assert [c.idx for c in slow.clients] == [0, 5, 10, 15]
    assert all(c.slow for c in slow.clients) and slow.slow_clients == slow.clients
    assert len(mixed.clients) == 20 and [c.idx for c in mixed.slow_clients] == [0, 5, 10, 15]
    assert slow.by_idx[15] is slow.clients[3]  # reconnect timers find clients by index
    with pytest.raises(ValueError, match="role"):
        Worker(WorkerConfig(0, 1, "sse", 0, 20, 1, 10, role="middle"), None)


def test_slow_worker_accounting_merges_like_mixed():
    """A slow worker's report carries the slow readers' counts (and only theirs): merged with
    the fast workers' reports it gives the same slow-reader figures a mixed layout gives."""
    fast = Worker(WorkerConfig(0, 1, "sse", 0, 4, 1, 10, slow_every=2, role="fast"), None)
    slow = Worker(WorkerConfig(1, 1, "sse", 0, 4, 1, 10, slow_every=2, role="slow"), None)
    for w in (fast, slow):
        w.start_step(100.0, 0, 2)
        for c in w.clients:
            w.consume(c, b"id: 1\ndata: M1 100.000000\n\n", 100.05 if not c.slow else 112.0)
    w1 = slow.clients[0]
    slow.consume(w1, b"id: 1\ndata: M1 100.000000\nid: 2\ndata: M2 100.5\n\n", 113.0)  # dup 1
    slow.slow_drops, slow.slow_reconnects = 1, 1  # cut once, came back once
    reports = [fast.report({"c0": 2}), slow.report({"c0": 2})]
    assert sum(reports[0]["hist"].values()) == 2 and reports[0]["slow"]["clients"] == 0
    assert reports[1]["hist"] == {} and reports[1]["late"] == 0  # slow ones are never late
    cfg = load_config(build_parser().parse_args(["slow", "--clients", "4", "--slow-every", "2"]))
    group = _slow_group(cfg, {"c0": 2}, reports)
    assert group["clients"] == 2 and group["expected"] == 4
    assert (group["received"], group["lost"], group["duplicated"]) == (4, 1, 1)
    assert (group["drops"], group["resumed"]) == (1, 1)
    assert group["p99_ms"] > 10000


def test_slow_scenario_is_apart_by_default_and_mixed_on_request():
    p = build_parser()
    assert load_config(p.parse_args(["slow", "--clients", "100"])).slow_apart
    assert not load_config(p.parse_args(["slow", "--clients", "100", "--slow-mixed"])).slow_apart


def test_loadgen_cpu_by_role():
    rows = [
        {"role": "loadgen", "name": "bench-worker0", "cpu_s": 3.0, "cpu_util": 0.3},
        {"role": "loadgen", "name": "bench-worker1", "cpu_s": 2.5, "cpu_util": 0.25},
        {"role": "loadgen", "name": "bench-worker2-slow", "cpu_s": 1.0, "cpu_util": 0.1},
        {"role": "loadgen", "name": "publisher", "cpu_s": 0.5, "cpu_util": 0.05},
        {"role": "server", "name": "edge0", "cpu_s": 9.0, "cpu_util": 0.9},
    ]
    roles = loadgen_roles(rows)
    assert roles["workers"] == {"processes": 2, "cpu_s": 5.5, "busiest_core_share": 0.3}
    assert roles["slow_workers"] == {"processes": 1, "cpu_s": 1.0, "busiest_core_share": 0.1}
    assert roles["publisher"]["cpu_s"] == 0.5 and "edge0" not in roles


def test_handshake_failures_are_counted_by_reason():
    from bench.scenarios import fail_reasons

    w = Worker(WorkerConfig(0, 1, "sse", 0, 3, 1, 10), None)
    a, b, c = w.clients
    w.fail(a, 1.0, "connect ECONNREFUSED")
    w.fail(b, 1.0, "connect ECONNREFUSED")
    w.fail(c, 1.0, "status 503")
    assert w.status()["failures"] == 3
    assert w.status()["fail_reasons"] == {"connect ECONNREFUSED": 2, "status 503": 1}
    assert len(w.timers) == 3  # each retried

    class Handle:  # what the parent keeps of a worker: its last status
        def __init__(self, status):
            self.status = status

    handles = [Handle(w.status()), Handle({"fail_reasons": {"status 503": 4}}), Handle({})]
    assert fail_reasons(handles) == {"status 503": 5, "connect ECONNREFUSED": 2}


def test_rounds_alternate_and_judge_on_the_median_pair():
    from bench.scenarios import LoadConfig, _step_rates, slow_effect_rounds

    cfg = load_config(build_parser().parse_args(["slow", "--clients", "100", "--rounds", "3"]))
    assert cfg.slow_rounds == 3 and _step_rates(cfg) == [cfg.rate] * 6
    one = LoadConfig("slow", "sse", 10, 1, 1.0, 1.0, 1, "http", 1, 1, slow_every=10)
    assert len(_step_rates(one)) == 2

    def st(per_s, p99, slowed, drops=0):
        return {
            "deliveries": {"per_s": per_s, "on_time": per_s},
            "latency_ms": {"p50": 1.0, "p99": p99},
            "slowed": slowed,
            "slow_readers": {
                "clients": 10,
                "bytes_per_s": 256,
                "expected": 5,
                "received": 5,
                "lost": 0,
                "duplicated": 0,
                "drops": drops,
                "resumed": drops,
                "p50_ms": 10.0,
                "p99_ms": 20.0 + drops,
            },
        }

    # pairs: p99 x1.0, x2.0 (a load spike in one slowed step), x1.05: the median is 1.05
    steps = [st(1000, 100, False), st(1000, 100, True), st(1000, 100, False)]
    steps += [st(900, 200, True, drops=2), st(1000, 200, False), st(980, 210, True, drops=1)]
    e = slow_effect_rounds(steps)
    assert [p["fast_p99_ratio"] for p in e["pairs"]] == [1.0, 2.0, 1.05]
    assert (e["fast_p99_ratio"], e["fast_throughput_kept"], e["goal_met"]) == (1.05, 0.98, True)
    s = e["slow_readers"]
    assert (s["clients"], s["expected"], s["drops"], s["resumed"], s["p99_ms"]) == (
        10,
        15,
        3,
        3,
        22.0,
    )
