"""The soak: its verdict (sans-IO), and a soak against a real gripcast cluster shortened to
three 3-second steps (connects, disconnects, resumes and publishes; RSS and open files of every
server process after each step; nothing lost)."""

from __future__ import annotations

import pytest

from bench.soak import verdict
from tests.bench.benchrun import gripcast_run


def _step(rss: dict, fds: dict, lost: int = 0) -> dict:
    return {
        "resources": [{"name": n, "rss_kib": rss[n], "fds": fds[n]} for n in rss],
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
    assert run["soak"]["lost"] == 0, run["soak"]
    assert run["soak"]["ok"] is not None
