"""The soak: its verdict (sans-IO), and a soak against a real gripcast cluster shortened to
three 3-second steps (connects, disconnects, resumes and publishes; RSS, open files and trio
tasks of every server process after each step; nothing lost)."""

from __future__ import annotations

import pytest

from bench.soak import verdict
from tests.bench.benchrun import gripcast_run


def _step(rss: dict, fds: dict, lost: int = 0, tasks: dict | None = None) -> dict:
    tasks = tasks or {}
    return {
        "resources": [
            {"name": n, "rss_kib": rss[n], "fds": fds[n], "tasks": tasks.get(n)} for n in rss
        ],
        "loss": {"lost": lost, "duplicated": 0},
    }


def test_soak_verdict_flat_and_growing():
    flat = [_step({"edge0": 1000, "broker": 500}, {"edge0": 60, "broker": 20}) for _ in range(4)]
    v = verdict(flat)
    assert v["ok"] and v["problems"] == [] and len(v["processes"]) == 2
    grown = flat + [_step({"edge0": 1200, "broker": 500}, {"edge0": 100, "broker": 20})]
    v = verdict(grown)
    assert not v["ok"]
    assert v["problems"] == [
        "edge0 RSS grew 20.0% after the warm-up",
        "edge0 holds 40 more files than after the warm-up",
    ]
    assert verdict(
        flat[:3] + [_step({"edge0": 1000, "broker": 500}, {"edge0": 60, "broker": 20}, 2)]
    )["problems"] == ["lost 2"]
    assert verdict(flat[:1])["ok"] is None  # no step after the warm-up


def test_soak_verdict_trio_tasks():
    """Tasks are judged like RSS: within 10% (at least 32 tasks) of the count after the
    warm-up; a process without a count (Pushpin's) is judged on RSS and files only."""
    rss, fds = {"edge0": 1000, "broker": 500}, {"edge0": 60, "broker": 20}

    def run(*edge_tasks):
        return [_step(rss, fds, tasks={"edge0": t, "broker": 40}) for t in edge_tasks]

    v = verdict(run(1000, 1090, 950, 1080))  # churn: a few percent in flight
    assert v["ok"], v["problems"]
    row = next(p for p in v["processes"] if p["name"] == "edge0")
    assert (row["tasks_after_warmup"], row["tasks_last"], row["tasks_max"]) == (1000, 1080, 1090)
    v = verdict(run(1000, 1050, 1101))
    assert v["problems"] == ["edge0 runs 101 more trio tasks than after the warm-up"]
    v = verdict(run(100, 120, 132))  # small counts: the 32-task floor
    assert v["ok"]
    assert verdict(run(100, 120, 133))["problems"] == [
        "edge0 runs 33 more trio tasks than after the warm-up"
    ]
    assert verdict([_step(rss, fds) for _ in range(3)])["ok"]  # no task counts at all


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_soak_quick_gripcast(tmp_path):
    run, _ = gripcast_run(
        tmp_path / "soak.json",
        *("soak", "--minutes", "0.15", "--interval", "3", "--clients", "60", "--rate", "10"),
        *("--churn-rate", "6", "--warmup", "10"),
    )
    assert run["config"]["resume"] and run["config"]["soak_steps"] == 3
    assert len(run["steps"]) == 3
    assert sum(s["connections"]["churned"] for s in run["steps"]) > 0
    assert all(
        {"broker", "edge0", "edge1"} <= {p["name"] for p in s["resources"]} for s in run["steps"]
    )
    # every gripcast process's trio task count, read from its /metrics
    for s in run["steps"]:
        tasks = {p["name"]: p["tasks"] for p in s["resources"]}
        assert all(tasks[n] > 0 for n in ("broker", "edge0", "edge1")), tasks
    assert {p["name"] for p in run["soak"]["processes"] if p["tasks_last"]} >= {"broker", "edge0"}
    assert run["soak"]["lost"] == 0, run["soak"]
    assert run["soak"]["ok"] is not None
