"""The fair comparison, sans-IO: both targets get the same log level and stats socket, the
target order alternates, the publisher spreads items round the channels (and batches them),
workers count each step apart and tell late deliveries from lost ones, and the saturation
search's steps and verdicts."""

from __future__ import annotations

import math

import pytest

from bench.cli import build_parser, load_config, target_order
from bench.publisher import (
    PublishPlan,
    format_item,
    item_of,
    items_per_post,
    padding,
    plan_total,
    published_counts,
)
from bench.saturation import SaturationRule, rate_steps, summary, verdict
from bench.swarm import Worker, WorkerConfig
from bench.targets import pushpin_config, write_gripcast_config

PORTS = dict(
    rundir="/r",
    logdir="/l",
    tag=1,
    client_port=1,
    routes="/routes",
    push_port=2,
    sub_port=3,
    http_port=4,
    command_port=5,
)


def _conf_value(text: str, key: str) -> str:
    return [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")][0]


@pytest.mark.parametrize(("level", "number"), [("warning", "1"), ("info", "2"), ("error", "0")])
def test_same_log_level_and_stats_on_both_targets(tmp_path, level, number):
    pp = pushpin_config(log_level=level, stats=True, **PORTS)
    assert _conf_value(pp, "log_level") == number
    assert _conf_value(pp, "stats_spec") == "ipc://{rundir}/{ipc_prefix}stats"
    assert _conf_value(pp, "stats_report_interval") == "10"
    gc = tmp_path / "g.toml"
    write_gripcast_config(gc, {"client_port": 1}, 9, 2, level, "ipc:///x/stats")
    text = gc.read_text()
    assert f'log_level = "{level}"' in text
    assert 'stats_spec = "ipc:///x/stats"' in text
    assert "stats_report_interval_s = 10" in text


def test_stats_off_on_both_targets(tmp_path):
    assert _conf_value(pushpin_config(stats=False, **PORTS), "stats_spec") == ""
    gc = tmp_path / "g.toml"
    write_gripcast_config(gc, {"client_port": 1}, 9, 2, "warning", "")
    assert "stats_spec" not in gc.read_text()


def test_target_order_alternates_between_invocations(tmp_path):
    state = tmp_path / "order"
    firsts = [target_order("both", "alternate", state)[0] for _ in range(4)]
    assert firsts == ["gripcast", "pushpin", "gripcast", "pushpin"]
    assert target_order("both", "pushpin-first", state) == ["pushpin", "gripcast"]
    assert target_order("both", "gripcast-first", state) == ["gripcast", "pushpin"]
    assert target_order("pushpin", "alternate", state) == ["pushpin"]


def test_only_the_churn_scenario_resumes_with_a_cursor():
    p = build_parser()
    assert not load_config(p.parse_args(["fanout", "--smoke"])).resume
    assert load_config(p.parse_args(["churn", "--smoke"])).resume
    cfg = load_config(p.parse_args(["channels", "--channels", "100", "--per-channel", "10"]))
    assert not cfg.resume and cfg.saturate and cfg.clients == 1000 and cfg.batch == 100
    assert cfg.rate == pytest.approx(1000 / 100)  # total msgs/s -> per channel


def test_fanout_clients_send_no_cursor_on_reconnect():
    w = Worker(WorkerConfig(0, 1, "sse", 0, 1, 1, 10, resume=False), None)
    c = w.clients[0]
    w.consume(c, b"id: 3\ndata: M3 1.000000\n\n", 1.0)
    assert c.last == 3
    assert b"last-event-id" not in w.request(c).lower()
    ws = Worker(WorkerConfig(0, 1, "stream", 0, 1, 1, 10, resume=False), None)
    ws.consume(ws.clients[0], b"M3 1.000000\n", 1.0)
    assert b"?last=" not in ws.request(ws.clients[0])


def test_items_go_round_the_channels():
    assert [item_of(k, 3, 10) for k in range(7)] == [
        ("c0", 11),
        ("c1", 11),
        ("c2", 11),
        ("c0", 12),
        ("c1", 12),
        ("c2", 12),
        ("c0", 13),
    ]
    assert published_counts(7, 3) == {"c0": 3, "c1": 2, "c2": 2}
    plan = PublishPlan("http", "", "", "sse", 10_000, 0.25, 8.0, 0.0)
    assert plan_total(plan) == 2 * 10_000  # 2,500 msgs/s in all for 8 s
    assert plan_total(PublishPlan("http", "", "", "sse", 4, 0.01, 5.0, 0.0)) == 4  # at least one


def test_a_step_counts_its_own_seqs_late_apart_from_lost():
    w = Worker(WorkerConfig(0, 1, "sse", 0, 2, 1, 10, late_s=5.0), None)
    a, b = w.clients
    w.start_step(100.0, 0, 3)
    # seq 1 on time, seq 2 seven seconds late, seq 3 never
    w.consume(a, b"id: 1\ndata: M1 100.000000\n\n", 100.010)
    w.consume(a, b"id: 2\ndata: M2 100.500000\n\n", 107.5)
    w.consume(b, b"id: 1\ndata: M1 100.000000\n\nid: 2\ndata: M2 100.5\n\n", 100.6)
    r = w.report({"c0": 3})
    assert r["late"] == 1
    assert list(r["late_hist"].values()) == [1]
    (bucket,) = r["late_hist"]
    assert math.exp(bucket / 20) / 1e3 == pytest.approx(7000, rel=0.06)
    assert r["lost"] == 2  # seq 3 on both clients: never arrived
    assert w.step_deliveries == 4
    # the next step: seqs 4..5; a straggler of step 1 is stale, not a delivery of step 2
    w.start_step(200.0, 3, 2)
    w.consume(a, b"id: 3\ndata: M3 101.0\n\nid: 4\ndata: M4 200.0\n\n", 200.1)
    w.consume(b, b"id: 4\ndata: M4 200.0\n\nid: 5\ndata: M5 200.2\n\n", 200.3)
    r = w.report({"c0": 2})
    assert (r["stale"], r["late"], r["lost"], w.step_deliveries) == (1, 0, 1, 3)
    assert r["detail"][0]["lost_seqs"] == [[5, 5]]
    assert a.last == 4  # the cursor stays the real seq


def _step(rate, expected, on_time, p99, lost=0, offered=100.0, achieved=100.0):
    return {
        "rate": rate,
        "deliveries": {"expected": expected, "on_time": on_time, "per_s": on_time / 5},
        "latency_ms": {"p99": p99},
        "loss": {"lost": lost},
        "publish": {"offered_per_s": offered, "rate_achieved": achieved},
    }


def test_rate_steps_rise_geometrically():
    assert rate_steps(10, 2, 4) == [10, 20, 40, 80]
    assert rate_steps(10, 1.5, 10, max_rate=30) == [10, 15, 22.5]
    with pytest.raises(ValueError):
        rate_steps(10, 1.0, 3)


def test_saturation_verdicts():
    rule = SaturationRule(p99_bound_ms=500)
    assert not verdict(_step(1, 1000, 1000, 80), rule)["saturated"]
    assert verdict(_step(1, 1000, 900, 80), rule)["reasons"][0].startswith("behind: 90.0%")
    assert verdict(_step(1, 1000, 1000, 800), rule)["reasons"] == ["p99 800 ms > 500 ms"]
    assert verdict(_step(1, 1000, 1000, 80, lost=3), rule)["reasons"] == ["lost 3"]
    v = verdict(_step(1, 1000, 1000, 80, achieved=50), rule)
    assert v["loadgen_limited"] and not v["saturated"]  # publisher's CPU unknown: its limit
    st = _step(1, 1000, 1000, 80, achieved=50)
    st["publish"].update(cpu_s=1.8, elapsed_s=2.0)  # busy: the load generator's limit
    assert verdict(st, rule)["loadgen_limited"]
    st["publish"].update(cpu_s=0.4, elapsed_s=2.0)  # mostly waiting for the target's answers
    v = verdict(st, rule)
    assert v["saturated"] and not v["loadgen_limited"]
    assert v["reasons"] == [
        "publish behind: the target took 50 of 100 items/s (publisher at 0.20 of a core)"
    ]
    st = _step(1, 1000, 1000, 80)
    st["cpu"] = {
        "publish_phase": [
            {"role": "loadgen", "name": "bench-worker1", "cpu_util": 0.97},
            {"role": "server", "name": "edge0", "cpu_util": 1.0},
        ]
    }
    v = verdict(st, rule)
    assert v["loadgen_limited"] and v["note"] == "client workers at a full core: bench-worker1 0.97"


def test_saturation_summary_names_the_limit_and_what_broke_it():
    rule = SaturationRule(p99_bound_ms=500)
    steps = [_step(1, 1000, 1000, 50), _step(2, 2000, 2000, 90), _step(4, 4000, 2000, 900)]
    for s in steps:
        s["saturation"] = verdict(s, rule)
    out = summary(steps, 10)
    assert out["stopped_by"] == "saturated"
    assert (out["limit_rate"], out["limit_deliveries_per_s"]) == (2, 400)
    assert out["saturated_rate"] == 4
    assert len(out["saturated_reasons"]) == 2
    assert summary(steps[:2], 2)["stopped_by"] == "max_steps"
    steps[2]["saturation"]["loadgen_limited"] = True
    assert summary(steps, 10)["stopped_by"] == "loadgen"


def test_slow_readers_are_counted_apart():
    w = Worker(WorkerConfig(0, 1, "sse", 0, 2, 1, 10, slow_every=2), None)
    slow, fast = w.clients
    assert slow.slow and not fast.slow
    w.start_step(100.0, 0, 2)
    w.consume(fast, b"id: 1\ndata: M1 100.000000\n\n", 100.01)
    w.consume(slow, b"id: 1\ndata: M1 100.000000\n\n", 109.0)  # 9 s: slow, not "late"
    r = w.report({"c0": 2})
    assert sum(r["hist"].values()) == 1  # the fast client's delivery only
    assert r["late"] == 0 and r["max_lat"] < 1
    assert r["slow"]["deliveries"] == 1 and sum(r["slow"]["hist"].values()) == 1
    assert (r["lost"], r["slow"]["lost"]) == (2, 1)  # seq 2: both lost, one of them slow


def test_slow_effect_compares_the_fast_clients():
    from bench.scenarios import slow_effect

    def st(per_s, p99):
        return {
            "deliveries": {"per_s": per_s, "on_time": per_s},
            "latency_ms": {"p50": 1.0, "p99": p99},
        }

    e = slow_effect(st(1000, 100), st(950, 105))
    assert (e["fast_throughput_kept"], e["fast_p99_ratio"], e["goal_met"]) == (0.95, 1.05, True)
    assert not slow_effect(st(1000, 100), st(850, 100))["goal_met"]
    assert not slow_effect(st(1000, 100), st(1000, 200))["goal_met"]


def test_origin_keep_alive_header():
    from bench.origin import keep_alive_header, respond

    assert keep_alive_header(b"sse", 20) == (
        b"Grip-Keep-Alive: :ka\\n\\n; format=cstring; timeout=20\r\n"
    )
    assert keep_alive_header(b"stream", 5) == b"Grip-Keep-Alive: \\n; format=cstring; timeout=5\r\n"
    assert keep_alive_header(b"lp", 5) == keep_alive_header(b"sse", 0) == b""
    assert b"Grip-Keep-Alive" not in respond(b"/sse/c1", None, False)
    assert b"timeout=7" in respond(b"/sse/c1", None, False, b"", 7)


def test_many_clients_spread_over_workers_and_source_addresses():
    p = build_parser()
    cfg = load_config(p.parse_args(["fanout", "--clients", "100000", "--target", "gripcast"]))
    assert cfg.procs == 7  # at most ~15,000 connections per worker
    assert cfg.source_addrs == 5  # at most ~20,000 per loopback source address
    assert load_config(p.parse_args(["fanout", "--clients", "1000"])).source_addrs == 0


def test_pushpin_is_not_run_past_its_connection_limit(capsys):
    from bench.cli import main

    assert (
        main(["fanout", "--clients", "20000", "--target", "both", "--order", "gripcast-first"]) == 2
    )
    assert "18,000" in capsys.readouterr().out


def test_a_saturated_step_with_idle_servers_says_so():
    st = _step(1, 1000, 1000, 900)
    st["cpu"] = {"publish_phase": [{"role": "server", "name": "edge0", "cpu_util": 0.1}]}
    v = verdict(st, SaturationRule(p99_bound_ms=500))
    assert v["saturated"] and v["idle_target"] == "no server process above 0.10 of a core"
    st["cpu"]["publish_phase"][0]["cpu_util"] = 0.9
    assert verdict(st, SaturationRule(p99_bound_ms=500))["idle_target"] == ""


def test_tls_listeners_keep_the_fair_settings(tmp_path):
    """``--tls`` adds an HTTPS listener to both targets and changes nothing else they share."""
    pp = pushpin_config(log_level="info", stats=True, https_port=7, **PORTS)
    assert _conf_value(pp, "https_ports") == "127.0.0.1:7"
    assert _conf_value(pp, "http_port") == "127.0.0.1:1"  # --port is not passed with TLS
    assert _conf_value(pp, "log_level") == "2"
    assert _conf_value(pp, "stats_spec") == "ipc://{rundir}/{ipc_prefix}stats"
    plain = pushpin_config(**PORTS)
    assert "https_ports" not in plain and _conf_value(plain, "http_port") == "1"
    gc = tmp_path / "g.toml"
    write_gripcast_config(
        gc, {"client_port": 1}, 9, 2, "info", "ipc:///x/stats", (7, "/c.crt", "/c.key")
    )
    text = gc.read_text()
    assert 'https_port = ["127.0.0.1:7"]' in text
    assert 'tls_cert = "/c.crt"' in text and 'tls_key = "/c.key"' in text
    assert 'log_level = "info"' in text and 'stats_spec = "ipc:///x/stats"' in text


def test_an_explicit_duration_wins_over_smoke():
    p = build_parser()
    assert load_config(p.parse_args(["fanout", "--smoke"])).duration == 5.0
    assert load_config(p.parse_args(["fanout", "--smoke", "--duration", "2"])).duration == 2.0
    assert load_config(p.parse_args(["channels", "--smoke"])).duration == 4.0
    assert load_config(p.parse_args(["channels", "--smoke", "--duration", "1"])).duration == 1.0
    assert load_config(p.parse_args(["fanout"])).duration == 15.0
    soak = p.parse_args(["soak", "--minutes", "0.15", "--interval", "3"])
    assert (load_config(soak).duration, load_config(soak).soak_steps) == (3.0, 3)


def test_large_messages_go_fewer_to_a_post():
    """A POST of 64 KiB messages stays under the broker's 1,000,000-byte request limit."""
    import json

    assert items_per_post(0, 0) == 1000 and items_per_post(100, 0) == 100
    for size in (4096, 16384, 65536, 1 << 20):
        n = items_per_post(0, size)
        items = [format_item("sse", "c0", k, 1.0, padding(size)) for k in range(n)]
        body = json.dumps({"items": items}).encode()
        assert n >= 1 and (len(body) < 1_000_000 or n == 1), (size, n, len(body))
    assert items_per_post(0, 65536) == 13 and items_per_post(10, 65536) == 10
