"""``bench wakecost`` (what a loopback write costs the writer when it wakes a sleeping reader,
bench/wakecost.c): the case table and argument checks, then a small real run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from bench import wakecost
from bench.cli import build_parser

from .benchrun import run_bench

needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"
)


def test_cases_on_two_cpus_and_on_one():
    two = wakecost.cases_for([2, 5, 7])
    assert [c[0] for c in two] == ["same CPU", "other CPU, idle", "other CPU, busy", "unpinned"]
    assert two[0][1:] == (2, 2, False)
    assert two[1][1:] == (2, 5, False) and two[2][1:] == (2, 5, True)
    assert two[3][1:] == (-1, -1, False)
    # one CPU: nothing that needs a second
    assert [c[0] for c in wakecost.cases_for([3])] == ["same CPU", "unpinned"]
    assert wakecost.cases_for([]) == []


def test_check_and_parser_defaults():
    assert wakecost.check(20000, 50, 2) == []
    problems = "\n".join(wakecost.check(0, -1, 0))
    for part in ("--iterations", "--gap-us", "--repeat"):
        assert part in problems
    args = build_parser().parse_args(["wakecost"])
    assert (args.iterations, args.gap_us, args.repeat) == (20000, 50, 2)


def test_machine_settings_read_what_exists(tmp_path):
    f = tmp_path / "driver"
    f.write_text("haltpoll\n")
    got = wakecost.machine_idle_settings({"cpuidle_driver": str(f), "x": str(tmp_path / "no")})
    assert got == {"cpuidle_driver": "haltpoll", "x": None}


@needs_gcc
def test_the_binary_refuses_bad_arguments(tmp_path):
    binary = wakecost.build(cache=tmp_path / "cache")
    for argv in (
        [],
        ["0", "50", "0", "0"],
        ["10", "50", "0", "-1", "busy"],
        ["1", "1", "0", "0", "x"],
    ):
        p = subprocess.run([binary, *argv], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, (argv, p.stdout, p.stderr)
        assert "wakecost" in p.stderr or "usage" in p.stderr


@needs_gcc
def test_a_small_run_reports_every_case(tmp_path):
    record, proc = run_bench(
        tmp_path / "wk.json", "wakecost", "--iterations", "300", "--gap-us", "20", "--repeat", "1"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    want = [c[0] for c in wakecost.cases_for(sorted(os.sched_getaffinity(0)))]
    rows = record["rows"]
    assert sorted(r["case"] for r in rows) == sorted(want)
    for r in rows:
        assert "error" not in r, r
        assert r["iterations"] == 300 and r["gap_us"] == 20
        assert r["cpu_us_per_write"] > 0 and r["wall_us_per_write"] > 0
        assert r["worst_cpu_us"] >= r["cpu_us_per_write"]
    busy = [r for r in rows if r["case"] == "other CPU, busy"]
    assert all(r["busy"] is True for r in busy)
    assert set(record["median_cpu_us_per_write"]) == set(want)
    assert set(record["machine"]) == {"cpuidle_driver", "guest_halt_poll_ns"}
    assert "us per write" in proc.stdout
    # the busy case's spinner is gone with its run
    assert not [pid for pid in _pids() if _argv0(pid).startswith("wakecost-")]


def _pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit()]


def _argv0(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0].decode(errors="replace"))
    except OSError:
        return ""


@needs_gcc
def test_killing_the_writer_leaves_no_spinner_or_reader(tmp_path):
    binary = wakecost.build(cache=tmp_path / "cache")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("the busy case needs two CPUs")
    p = subprocess.Popen([binary, "100000000", "50", str(cpus[0]), str(cpus[1]), "busy"])
    name = os.path.basename(binary)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_named(name)) < 3:  # writer, reader, spinner
        time.sleep(0.05)
    assert len(_named(name)) == 3
    p.kill()
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _named(name):
        time.sleep(0.05)
    assert _named(name) == []


def _named(name: str) -> list[str]:
    return [pid for pid in _pids() if _argv0(pid) == name]
