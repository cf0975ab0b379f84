"""What a wake-up costs on this machine (issue 16): one loopback write to a reader asleep in
``read()``, with the reader on the writer's CPU, on another CPU, on another CPU that is busy,
and where the kernel puts it.

``python -m bench wakecost`` runs ``bench/wakecost.c`` (compiled with gcc at first use, cached
like ``bench.connload``) once per case and prints the writer's own CPU time inside ``write()``:
loopback runs the TCP path of both ends and the reader's wake-up inside the writer's call, so
this is what the kernel charges the process that hands data to another one (an edge writing a
request to the origin or a response head to a new client, the broker waking its I/O thread).
On a virtual machine a wake-up on another vCPU needs an inter-processor interrupt, which the
hypervisor may make expensive; ``bench/RESULTS.md`` ("Sixteenth session") has this machine's
figures and what they mean for the connection rate. The machine's cpuidle driver and its guest
halt-polling window are reported beside them (a vCPU that polls when idle is woken without an
interrupt).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from bench.connload import build_c, ready_binary
from bench.report import save_results

SOURCE = Path(__file__).with_name("wakecost.c")

# (name, writer CPU, reader CPU, a busy process on the reader's CPU); -1: the kernel chooses
CASES: tuple[tuple[str, int, int, bool], ...] = (
    ("same CPU", 0, 0, False),
    ("other CPU, idle", 0, 1, False),
    ("other CPU, busy", 0, 1, True),
    ("unpinned", -1, -1, False),
)

CPUIDLE_FILES = {
    "cpuidle_driver": "/sys/devices/system/cpu/cpuidle/current_driver",
    "guest_halt_poll_ns": "/sys/module/haltpoll/parameters/guest_halt_poll_ns",
}


def build(source: Path = SOURCE, cache: Path | None = None) -> str:
    """The path of the compiled wakecost (compiled once per source version)."""
    return build_c(source, "wakecost", [], cache)


def check(iterations: int, gap_us: int, repeat: int) -> list[str]:
    problems = []
    if iterations < 1:
        problems.append("--iterations: at least 1")
    if gap_us < 0:
        problems.append("--gap-us: 0 or more")
    if repeat < 1:
        problems.append("--repeat: at least 1")
    return problems


def cases_for(cpus: list[int]) -> list[tuple[str, int, int, bool]]:
    """The cases this machine can run, on its first two usable CPUs (one CPU: the cases that
    need a second are left out)."""
    if not cpus:
        return []
    first = cpus[0]
    second = cpus[1] if len(cpus) > 1 else None
    out = []
    for name, w, r, busy in CASES:
        if w < 0:
            out.append((name, -1, -1, busy))
        elif r == w:
            out.append((name, first, first, busy))
        elif second is not None:
            out.append((name, first, second, busy))
    return out


def machine_idle_settings(files: dict[str, str] = CPUIDLE_FILES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, path in files.items():
        try:
            out[key] = Path(path).read_text().strip()
        except OSError:
            out[key] = None
    return out


def run_case(
    binary: str, iterations: int, gap_us: int, writer: int, reader: int, busy: bool
) -> dict:
    argv = [binary, str(iterations), str(gap_us), str(writer), str(reader)]
    if busy:
        argv.append("busy")
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60 + iterations * 0.01)
    if p.returncode != 0:
        return {"error": p.stderr.strip() or f"exit {p.returncode}"}
    return json.loads(p.stdout)


def main(args) -> int:
    binary = ready_binary("wakecost", check(args.iterations, args.gap_us, args.repeat), build)
    if binary is None:
        return 2
    cases = cases_for(sorted(os.sched_getaffinity(0)))
    idle = machine_idle_settings()
    print(
        f"wakecost: {args.iterations:,} one-byte loopback writes per case, each after a "
        f"{args.gap_us} us pause; cpuidle driver {idle['cpuidle_driver']}, guest halt polling "
        f"{idle['guest_halt_poll_ns']} ns"
    )
    rows = []
    for rnd in range(args.repeat):
        order = cases if rnd % 2 == 0 else list(reversed(cases))
        for name, w, r, busy in order:
            row = run_case(binary, args.iterations, args.gap_us, w, r, busy)
            row.update(case=name, round=rnd, loadavg=os.getloadavg()[0])
            rows.append(row)
            if "error" in row:
                print(f"  round {rnd} {name:16s}: error: {row['error']}")
            else:
                print(
                    f"  round {rnd} {name:16s}: {row['cpu_us_per_write']:.2f} us of the "
                    f"writer's CPU per write ({row['wall_us_per_write']:.2f} us wall), "
                    f"load {row['loadavg']:.1f}"
                )
    medians = {}
    for name, *_ in cases:
        vals = [r["cpu_us_per_write"] for r in rows if r["case"] == name and "error" not in r]
        if vals:
            medians[name] = statistics.median(vals)
            print(f"median, {name}: {medians[name]:.2f} us per write")
    out = {
        "scenario": "wakecost",
        "command": "python -m bench wakecost " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {"iterations": args.iterations, "gap_us": args.gap_us, "repeat": args.repeat},
        "machine": idle,
        "rows": rows,
        "median_cpu_us_per_write": medians,
    }
    save_results(out, args.out, "wakecost")
    return 0 if rows and all("error" not in r for r in rows) else 1
