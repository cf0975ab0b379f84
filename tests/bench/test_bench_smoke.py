"""The bench's smoke fanout against a real gripcast cluster: zero loss, and the JSON is written."""

from __future__ import annotations

import pytest

from tests.bench.benchrun import gripcast_run, run_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_smoke_fanout_gripcast(tmp_path, transport):
    record, proc = run_bench(
        tmp_path / "smoke.json",
        *("fanout", "--smoke", "--target", "gripcast", "--transport", transport),
        *("--edges", "2", "--duration", "2"),
    )
    run = record["runs"]["gripcast"]
    assert run["ok"], run.get("error")
    assert run["connect"]["connected"] == 50
    assert run["deliveries"]["expected"] == 50 * run["publish"]["per_channel"] > 0
    assert run["loss"]["lost"] == 0, run["loss"]
    assert run["loss"]["duplicated"] == 0, run["loss"]
    assert run["deliveries"]["received"] == run["deliveries"]["expected"]
    assert run["late"]["count"] == 0
    assert run["warmup"]["received"] == run["warmup"]["clients"] == 100
    # memory over the whole process tree: the runner, the broker and every edge
    names = {p["name"] for p in run["memory"]["by_process"]}
    assert {"run", "broker", "edge0", "edge1"} <= names, names
    assert record["order"] == ["gripcast"]
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_smoke_fanout_tls_gripcast(tmp_path):
    """``--tls``: the same target over plain HTTP, then over HTTPS, both lossless, with the
    fair comparison's settings and the TLS cost in the JSON."""
    record, proc = run_bench(
        tmp_path / "tls.json",
        *("fanout", "--smoke", "--target", "gripcast", "--tls", "--warmup", "10"),
        *("--duration", "2"),
    )
    assert list(record["runs"]) == ["gripcast", "gripcast+tls"]
    for name, run in record["runs"].items():
        assert run["ok"], (name, run.get("error"))
        assert run["config"]["tls"] == (name == "gripcast+tls")
        assert run["config"]["stats"] and run["config"]["log_level"] == "warning"
        assert run["connect"]["connected"] == 50
        assert run["deliveries"]["received"] == run["deliveries"]["expected"] > 0
        assert run["loss"]["lost"] == run["loss"]["duplicated"] == 0, run["loss"]
    cost = record["tls_cost"]["connections/s while establishing"]
    assert cost["gripcast"] is not None and cost["gripcast"] > 0
    assert "TLS cost" in proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_rest_with_keep_alives_gripcast(tmp_path):
    """CPU at rest with keep-alives on: every connection stays open and gets keep-alives
    (ignored by the clients), then the messages arrive as usual."""
    run, _ = gripcast_run(
        tmp_path / "rest.json",
        *("fanout", "--smoke", "--target", "gripcast", "--rest", "2.5", "--keep-alive", "1"),
        *("--warmup", "10", "--duration", "1"),
    )
    rest = run["rest"]
    assert rest["keep_alive_s"] == 1 and rest["s"] >= 2.5
    assert rest["live"] == 50
    # CPU time is counted in 10-ms ticks: 50 idle connections can read 0 over 2.5 s, so the
    # check that the servers worked at rest is on what the clients read: the keep-alives
    # (``:ka`` comments, at least one a connection in the window: status lags 0.25 s each end)
    assert rest["server_cpu_s"] >= 0 and rest["server_cpu_us_per_conn_s"] >= 0
    assert rest["rx_bytes"] >= rest["live"] * len(b":ka\n\n"), rest
    assert {p["name"] for p in rest["cpu"] if p["role"] == "server"} >= {"broker", "edge0"}
    assert run["deliveries"]["received"] == run["deliveries"]["expected"] > 0
    assert run["loss"]["lost"] == 0
