"""The floor under "CPU per delivery" (issue 16): one loopback ``send()`` with nothing around it.

``python -m bench sendfloor`` runs ``bench/sendfloor.c`` (compiled with gcc at first use, cached
like ``bench.connload``): ``--senders`` processes (as many as gripcast's edges) each hold their
share of ``--conns`` loopback HTTP-stream-like connections and send one ``--payload``-byte
message to every one of them ``--rate`` times a second with ``send(MSG_DONTWAIT)``, as an edge's
``send_batch`` does; ``--readers`` C reader processes read everything on one blocking epoll each,
as the bench's C reader does.  The figure is the senders' CPU (user + system, ``getrusage`` over
the send loops only) per send: what the kernel charges one delivery on this machine, including
the receiver's TCP path and wake-up that loopback runs inside the sender's ``send()``.  Compare
it with ``bench fanout --clients 10000 --rate 1``'s "server CPU us per delivery"; run both with
the same ``--client-sched``.
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

SOURCE = Path(__file__).with_name("sendfloor.c")
SCHEDS = ("normal", "batch")


def build(source: Path = SOURCE, cache: Path | None = None) -> str:
    """The path of the compiled sendfloor (compiled once per source version)."""
    return build_c(source, "sendfloor", [], cache)


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def check(conns: int, senders: int, readers: int, rate: float, duration: float) -> list[str]:
    problems = []
    if senders < 1:
        problems.append("--senders: at least 1")
    if readers < senders:
        problems.append("--readers: at least one per sender")
    if conns < readers:
        problems.append("--conns: at least one per reader")
    if conns // max(1, senders) > 18000:
        problems.append("--conns: at most 18,000 per sender (20,000 open files per process)")
    if rate <= 0 or duration <= 0:
        problems.append("--rate and --duration: positive")
    return problems


def run_once(
    binary: str,
    conns: int,
    senders: int,
    readers: int,
    rate: float,
    duration: float,
    payload: int,
    sched: str,
) -> dict:
    """Every sender at once; their reports merged: sends, CPU, us per send."""
    procs = []
    for n, r in zip(split(conns, senders), split(readers, senders)):
        argv = [binary, str(n), str(r), f"{rate:g}", f"{duration:g}", str(payload), sched]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    reports, errors = [], []
    for p in procs:
        try:
            out, err = p.communicate(timeout=duration + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        if p.returncode != 0:
            errors.append(err.decode(errors="replace").strip() or f"exit {p.returncode}")
            continue
        reports.append(json.loads(out))
    sends = sum(r["sends"] for r in reports)
    cpu = sum(r["cpu_s"] for r in reports)
    return {
        "sched": sched,
        "senders": reports,
        "errors": errors,
        "sends": sends,
        "short": sum(r["short"] for r in reports),
        "failed": sum(r["failed"] for r in reports),
        "cpu_s": round(cpu, 4),
        "sys_s": round(sum(r["sys_s"] for r in reports), 4),
        "us_per_send": round(cpu / sends * 1e6, 3) if sends else None,
        "preempted_per_send": (
            round(sum(r["nivcsw"] for r in reports) / sends, 3) if sends else None
        ),
    }


def main(args) -> int:
    binary = ready_binary(
        "sendfloor", check(args.conns, args.senders, args.readers, args.rate, args.duration), build
    )
    if binary is None:
        return 2
    scheds = SCHEDS if args.client_sched == "both" else (args.client_sched,)
    rows = []
    print(
        f"sendfloor: {args.conns:,} connections, {args.senders} sender(s), {args.readers} "
        f"reader(s), {args.rate:g} message(s)/s each, {args.payload} bytes, {args.duration:g} s"
    )
    for rnd in range(args.repeat):
        # alternate which policy goes first per round (the machine drifts within minutes)
        order = scheds if rnd % 2 == 0 else tuple(reversed(scheds))
        for sched in order:
            row = run_once(
                binary,
                args.conns,
                args.senders,
                args.readers,
                args.rate,
                args.duration,
                args.payload,
                sched,
            )
            row["round"] = rnd
            row["loadavg"] = os.getloadavg()[0]
            rows.append(row)
            err = f"  errors: {row['errors']}" if row["errors"] else ""
            print(
                f"  round {rnd} readers {sched:6s}: {row['sends']:,} sends, "
                f"{row['us_per_send']} us per send ({row['sys_s']:.2f} of {row['cpu_s']:.2f} "
                f"CPU s in the kernel), {row['preempted_per_send']} preemptions per send, "
                f"load {row['loadavg']:.1f}{err}"
            )
    medians = {}
    for sched in scheds:
        vals = [r["us_per_send"] for r in rows if r["sched"] == sched and r["us_per_send"]]
        if vals:
            medians[sched] = statistics.median(vals)
            print(f"median, readers {sched}: {medians[sched]:.2f} us per send")
    out = {
        "scenario": "sendfloor",
        "command": "python -m bench sendfloor " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            k: getattr(args, k)
            for k in ("conns", "senders", "readers", "rate", "duration", "payload", "repeat")
        },
        "rows": rows,
        "median_us_per_send": medians,
    }
    save_results(out, args.out, "sendfloor")
    ok = all(not r["errors"] and r["sends"] for r in rows)
    return 0 if ok else 1
