"""``bench.report``: the side-by-side table and the JSON comparison read gripcast against the
other target whatever order the two ran in (``--order`` alternates by invocation)."""

from __future__ import annotations

import io

from rich.console import Console

from bench.report import comparison, print_runs, ratio_pair

LIMIT = "saturation: limit deliveries/s (best unsaturated step)"
P99 = "latency p99 ms"


def _run(limit: float, p99: float, saturation: bool = True) -> dict:
    r = {
        "ok": True,
        "config": {
            "scenario": "channels",
            "transport": "sse",
            "clients": 10,
            "channels": 10,
            "rate": 1.0,
            "duration": 1.0,
            "publisher": "http",
            "edges": 2,
        },
        "deliveries": {"per_s": limit},
        "latency_ms": {"p99": p99},
        "memory": {"processes": 1, "per_conn_kib": 1.0, "by_process": []},
        "cpu": {"publish_phase_wall_s": 1.0, "publish_phase": [], "connect_phase": []},
    }
    if saturation:
        r["saturation"] = {"limit_deliveries_per_s": limit}
    return r


def test_ratio_pair_puts_gripcast_first():
    assert ratio_pair(["gripcast", "pushpin"]) == ("gripcast", "pushpin")
    assert ratio_pair(["pushpin", "gripcast"]) == ("gripcast", "pushpin")
    assert ratio_pair(["gripcast"]) is None
    assert ratio_pair(["a", "b"]) == ("a", "b")  # neither is gripcast: run order


def test_comparison_is_gripcast_over_pushpin_in_either_order():
    g, p = _run(56000, 83.0), _run(22500, 39.0)
    for runs in ({"gripcast": g, "pushpin": p}, {"pushpin": p, "gripcast": g}):
        c = comparison(runs)
        assert c[LIMIT]["ratio"] == round(56000 / 22500, 2)
        assert c[LIMIT]["ratio_of"] == "gripcast / pushpin"
        assert c[P99]["ratio"] == round(83.0 / 39.0, 2)
        assert c[LIMIT]["gripcast"] == 56000 and c[LIMIT]["pushpin"] == 22500


def test_table_ratio_column_is_gripcast_over_pushpin_when_pushpin_ran_first():
    buf = io.StringIO()
    console = Console(file=buf, width=250, color_system=None)
    runs = {"pushpin": _run(22500, 39.0, False), "gripcast": _run(56000, 83.0, False)}
    print_runs(runs, console)
    text = buf.getvalue()
    assert "gripcast / pushpin" in text and "pushpin / gripcast" not in text
    line = next(ln for ln in text.splitlines() if "received / time to receive" in ln)
    assert "2.49x" in line and "0.40x" not in line
