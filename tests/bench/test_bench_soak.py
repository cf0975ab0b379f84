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


def test_soak_verdict_judges_the_edges_files_together():
    """Reconnecting clients land on whichever edge the kernel picks: one edge's files walk up
    as another's walk down (a real 4-minute soak: +20 / -18); only their sum is a leak."""
    rss = {"edge0": 1000, "edge1": 1000, "broker": 500}
    steps = [
        _step(rss, {"edge0": 531, "edge1": 523, "broker": 31}),
        _step(rss, {"edge0": 546, "edge1": 509, "broker": 31}),
        _step(rss, {"edge0": 513, "edge1": 543, "broker": 31}),
    ]
    v = verdict(steps)
    assert v["ok"], v["problems"]
    leak = steps + [_step(rss, {"edge0": 522, "edge1": 543, "broker": 31})]  # +11 together
    assert verdict(leak)["ok"]
    leak = steps + [_step(rss, {"edge0": 535, "edge1": 543, "broker": 31})]  # +24 together
    assert verdict(leak)["problems"] == [
        "the edges together hold 24 more files than after the warm-up"
    ]
    broker = steps + [_step(rss, {"edge0": 513, "edge1": 543, "broker": 48})]
    assert verdict(broker)["problems"] == ["broker holds 17 more files than after the warm-up"]


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


def test_soak_broker_retains_one_steps_messages(tmp_path):
    """The soak's broker keeps one step's messages per channel (its history is full by the
    end of the warm-up: retained history does not read as RSS growth); other scenarios keep
    100,000."""
    from bench.cli import build_parser, load_config
    from bench.targets import write_gripcast_config

    def cfg(*argv):
        return load_config(build_parser().parse_args(list(argv)))

    assert cfg("soak", "--rate", "5").history_max_items == 300  # 5 msg/s x 60 s
    assert cfg("soak", "--quick").history_max_items == 100  # at least 100
    assert cfg("fanout").history_max_items == 100000
    path = tmp_path / "g.toml"
    write_gripcast_config(path, {"client_port": 1}, 2, 1, metrics=(3, 4), history_max_items=300)
    text = path.read_text()
    assert "history_max_items = 300\n" in text
    assert "metrics_port = 3\n" in text and "edge_metrics_port = 4\n" in text
