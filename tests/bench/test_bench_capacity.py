"""``python -m bench capacity --quick``: brokers on a real Redis Cluster, SUB peers as edges."""

from __future__ import annotations

import json
import sys

import pytest

from bench.capacity import slope, unit_costs
from tests.bench.benchrun import run_group


def test_slope_flat_and_growing():
    flat = [
        {"edges": 1, "broker_us_per_msg": 60.0},
        {"edges": 10, "broker_us_per_msg": 78.0},
        {"edges": 100, "broker_us_per_msg": 258.0},
    ]
    s = slope(flat)
    assert s["segments"][0]["us_per_msg_per_edge"] == 2.0
    assert s["segments"][1]["us_per_msg_per_edge"] == 2.0
    assert s["us_per_msg_per_edge"] == pytest.approx(2.0)
    assert s["intercept_us_per_msg"] == pytest.approx(58.0)
    assert s["flat"] is True
    # each extra edge costing more than the last (quadratic): not flat
    growing = [
        {"edges": 1, "broker_us_per_msg": 60.0},
        {"edges": 10, "broker_us_per_msg": 70.0},
        {"edges": 100, "broker_us_per_msg": 5000.0},
    ]
    assert slope(growing)["flat"] is False
    assert slope(flat[:1])["flat"] is None


def test_unit_costs_weighted_by_items():
    out = {
        "throughput": [
            {
                "store": "cluster",
                "ok": True,
                "items": 1000,
                "broker_cpu_s": 0.1,
                "redis_cpu_s": 0.05,
                "redis_commands_per_item": 0.2,
            },
            {
                "store": "cluster",
                "ok": True,
                "items": 3000,
                "broker_cpu_s": 0.3,
                "redis_cpu_s": 0.15,
                "redis_commands_per_item": 0.6,
            },
            {"store": "standalone", "ok": False},
        ],
        "fanout": {"slope": {"us_per_msg_per_edge": 1.5, "intercept_us_per_msg": 40.0}},
    }
    u = unit_costs(out)
    assert u["cluster"]["broker_cpu_us_per_item"] == 100.0
    assert u["cluster"]["redis_cpu_us_per_item"] == 50.0
    assert u["cluster"]["redis_commands_per_item"] == 0.5
    assert "standalone" not in u
    assert u["broker_us_per_msg_per_edge"] == 1.5


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_capacity_quick(tmp_path):
    out = tmp_path / "capacity.json"
    proc = run_group([sys.executable, "-m", "bench", "capacity", "--quick", "--out", str(out)], 80)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())["result"]
    assert r["ok"], json.dumps(r, indent=1)[:4000]
    rows = r["throughput"]
    assert [(x["store"], x["brokers"]) for x in rows] == [("cluster", 1), ("cluster", 2)]
    for x in rows:
        assert x["items"] > 0 and x["items_per_s_by_publisher"]["http"] > 0
        assert x["items_per_s_by_publisher"]["zmq"] > 0
        assert x["redis_nodes"] == 6 and x["redis_masters"] == 3
        assert x["broker_cpu_s_per_1k"] > 0 and x["redis_cpu_s_per_1k"] > 0
        assert x["redis_commands_per_item"] > 0 and x["redis_scripts_per_item"] > 0
        assert 0 < x["redis_master_cpu_s"] <= x["redis_cpu_s"]
    fan = r["fanout"]["rows"]
    assert [x["edges"] for x in fan] == [1, 10, 100]
    for x in fan:  # every SUB peer got every message
        assert x["deliveries"] == x["deliveries_expected"] == x["messages"] * x["edges"]
    assert r["fanout"]["slope"]["us_per_msg_per_edge"] is not None
    assert "2-core" in r["note"]
    assert "broker_us_per_msg_per_edge" in r["unit_costs"]


def test_unit_costs_edge_per_message():
    out = {
        "edge": {
            "ok": True,
            "edge_us_per_delivery": 5.5,
            "edge_kib_per_conn": 2.9,
            "edge_us_per_msg": 6.25,
        }
    }
    u = unit_costs(out)
    assert u["edge_us_per_delivery"] == 5.5
    assert u["edge_us_per_msg"] == 6.25
    assert u["edge_kib_per_idle_conn"] == 2.9
    # a run whose second part failed leaves e_msg out rather than reporting a guess
    del out["edge"]["edge_us_per_msg"]
    assert "edge_us_per_msg" not in unit_costs(out)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_capacity_edge_part_measures_e_msg():
    """The edge part for real, small: one edge, 400 SSE clients on one channel, then each on
    its own channel; every message arrives, and e_msg comes from the two runs' edge CPU (CPU
    is read in 10-ms clock ticks: with 100 clients the 1,000 deliveries of the first run took
    about one tick and could read as none)."""
    code = (
        "import json; from bench import capacity; "
        "cfg = capacity.config_for(False, parts=('edge',), edge_clients=400, edge_seconds=2.0, "
        "edge_msg_rate=1000.0); print('RESULT' + json.dumps(capacity.run_capacity(cfg)))"
    )
    proc = run_group([sys.executable, "-c", code], 170)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT") :])
    edge = r["edge"]
    assert r["ok"] and edge["ok"], json.dumps(edge, indent=1)
    assert edge["deliveries"] == 400 * 5 * 2 and edge["lost"] == 0
    pc = edge["per_channel"]
    assert pc["channels"] == 400 and pc["messages"] == 1000 * 2 and pc["lost"] == 0
    assert edge["edge_us_per_delivery"] > 0 and pc["edge_us_per_msg_delivered"] > 0
    expected = max(0.0, pc["edge_us_per_msg_delivered"] - edge["edge_us_per_delivery"])
    assert edge["edge_us_per_msg"] == pytest.approx(expected, abs=0.011)
    assert r["unit_costs"]["edge_us_per_msg"] == edge["edge_us_per_msg"]
