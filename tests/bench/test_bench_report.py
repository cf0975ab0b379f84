"""``bench.report``: the side-by-side table and the JSON comparison read gripcast against the
other target whatever order the two ran in (``--order`` alternates by invocation)."""

from __future__ import annotations

import io

from rich.console import Console

from bench.report import comparison, print_runs, print_same_rate, ratio_pair, same_rate_p99

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


def _step(rate: float, p99: float, saturated: bool = False) -> dict:
    return {
        "rate": rate,
        "msgs_per_s": rate * 10000,
        "offered_deliveries_per_s": rate * 10000,
        "latency_ms": {"p99": p99},
        "saturation": {"saturated": saturated},
    }


def test_same_rate_p99_pairs_common_steps_and_marks_the_others_limit():
    g = _run(56000, 83.0)
    g["steps"] = [_step(2.0, 6.0), _step(2.3, 12.0), _step(2.645, 8.0), _step(3.0, 14.0)]
    p = _run(22500, 39.0)
    p["steps"] = [_step(2.0, 30.0), _step(2.3, 40.0), _step(2.645, 39.0, saturated=True)]
    p["saturation"]["limit_rate"] = 2.3
    for runs in ({"gripcast": g, "pushpin": p}, {"pushpin": p, "gripcast": g}):
        same = same_rate_p99(runs)
        assert same is not None and same["ratio_of"] == "gripcast / pushpin"
        assert [r["rate"] for r in same["steps"]] == [2.0, 2.3, 2.645]  # 3.0: gripcast only
        assert [r["ratio"] for r in same["steps"]] == [0.2, 0.3, round(8 / 39, 2)]
        assert same["at_other_limit"]["rate"] == 2.3
        assert same["steps"][2]["saturated"] == {"gripcast": False, "pushpin": True}
    # one target, or no common step: nothing to compare
    assert same_rate_p99({"gripcast": g}) is None
    # steps without a saturation search (the slow and soak scenarios): not this comparison
    g2, p2 = dict(g), dict(p)
    del g2["saturation"], p2["saturation"]
    assert same_rate_p99({"gripcast": g2, "pushpin": p2}) is None
    # a step without its figures is skipped, the others still compare
    p3 = dict(p)
    p3["steps"] = [{"rate": 2.0, "error": "failed"}, *p["steps"][1:]]
    same = same_rate_p99({"gripcast": g, "pushpin": p3})
    assert same is not None and [r["rate"] for r in same["steps"]] == [2.3, 2.645]
    q = _run(1, 1.0)
    q["steps"] = [_step(9.0, 1.0)]
    assert same_rate_p99({"gripcast": g, "pushpin": q}) is None


def test_same_rate_table_names_the_limit_row():
    g = _run(56000, 83.0)
    g["steps"] = [_step(2.0, 6.0), _step(2.3, 12.0)]
    p = _run(22500, 39.0)
    p["steps"] = [_step(2.0, 30.0), _step(2.3, 40.0)]
    p["saturation"]["limit_rate"] = 2.3
    same = same_rate_p99({"pushpin": p, "gripcast": g})
    assert same is not None
    buf = io.StringIO()
    print_same_rate(same, Console(file=buf, width=200, color_system=None))
    line = next(ln for ln in buf.getvalue().splitlines() if "23,000" in ln)
    assert "0.30x at pushpin's limit" in line
