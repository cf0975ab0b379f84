"""``python -m bench fanout --target pushpin``: the smoke run against Debian's Pushpin, with the
same client behaviour, logging, stats and warm-up as gripcast gets; memory over its whole
process tree (the runner and every service it started)."""

from __future__ import annotations

import shutil

import pytest

from tests.bench.benchrun import run_bench

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("pushpin") is None, reason="pushpin is not installed"),
]


def test_smoke_fanout_pushpin(tmp_path):
    record, proc = run_bench(
        tmp_path / "smoke.json", "fanout", "--smoke", "--target", "pushpin", "--duration", "2"
    )
    assert list(record["runs"]) == ["pushpin"] == record["order"]
    run = record["runs"]["pushpin"]
    assert run["ok"], (run.get("error"), run.get("target_log_tail"))
    cfg = run["config"]
    assert (cfg["log_level"], cfg["stats"], cfg["resume"]) == ("warning", True, False)
    assert run["warmup"]["received"] == run["warmup"]["clients"] == 100
    assert run["connect"]["connected"] == 50
    assert run["deliveries"]["expected"] == 50 * run["publish"]["per_channel"] > 0
    assert run["deliveries"]["received"] == run["deliveries"]["expected"]
    assert run["loss"]["lost"] == run["loss"]["duplicated"] == run["late"]["count"] == 0
    names = {p["name"] for p in run["memory"]["by_process"]}
    assert {"pushpin", "condure", "zurl", "pushpin-proxy", "pushpin-handler"} <= names, names
    assert run["memory"]["processes"] == len(run["memory"]["by_process"])
    assert all("per_conn_kib" in p for p in run["memory"]["by_process"])
    assert proc.returncode == 0, proc.stderr[-3000:]
