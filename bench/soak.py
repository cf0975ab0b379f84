"""The soak's verdict, sans-IO: does any server process's RSS, open-file count or trio task
count keep growing, and was anything lost, over a long run of connects, disconnects, resumes
and publishes?

Each soak step (one sample interval) records every server process's RSS, open file
descriptors and (gripcast's broker and edges, from their ``/metrics``) trio tasks alive after
it (``resources``).  The first ``warmup_steps`` are the warm-up; after it, a process *grows*
when its last RSS is more than ``rss_slack`` above its RSS at the end of the warm-up, its last
fd count more than ``fd_slack`` above it, or its last task count more than ``task_slack`` (a
share) and ``task_floor`` (tasks) above it: connections come and go in a soak, so a few percent
of tasks are always in flight.  Processes are matched by name (an edge restarted by
``gripcast run`` keeps its name).  A process without a task count (Pushpin's) is judged on
RSS and files only.  gripcast's edges are judged on files together, not one by one: each
reconnecting client lands on an edge the kernel picks (``SO_REUSEPORT``), so one edge's count
walks up and down against the others' (+20 / -18 over 8 steps of 1,000 clients on two edges)
while their sum stays within a few files; a leak grows the sum.
"""

from __future__ import annotations

import re

_EDGE = re.compile(r"edge\d+")  # gripcast's edges (bench.targets names them so)


def verdict(
    steps: list[dict],
    warmup_steps: int = 1,
    rss_slack: float = 0.10,
    fd_slack: int = 16,
    task_slack: float = 0.10,
    task_floor: int = 32,
) -> dict:
    if len(steps) <= warmup_steps:
        return {"ok": None, "reason": "too short: no step after the warm-up", "processes": []}
    base = {p["name"]: p for p in steps[warmup_steps - 1]["resources"]} if warmup_steps else {}
    if not base:
        base = {p["name"]: p for p in steps[0]["resources"]}
    last = {p["name"]: p for p in steps[-1]["resources"]}
    rows, problems = [], []
    for name, b in sorted(base.items()):
        e = last.get(name)
        if e is None:
            problems.append(f"{name} is gone")
            continue
        growth = (e["rss_kib"] - b["rss_kib"]) / b["rss_kib"] if b["rss_kib"] else 0.0
        fds = e["fds"] - b["fds"]
        t0, t1 = b.get("tasks"), e.get("tasks")
        rows.append(
            {
                "name": name,
                "rss_kib_after_warmup": b["rss_kib"],
                "rss_kib_last": e["rss_kib"],
                "rss_growth": round(growth, 4),
                "fds_after_warmup": b["fds"],
                "fds_last": e["fds"],
                "tasks_after_warmup": t0,
                "tasks_last": t1,
                "tasks_max": max(
                    (
                        p["tasks"]
                        for st in steps[max(warmup_steps, 1) - 1 :]
                        for p in st["resources"]
                        if p["name"] == name and p.get("tasks") is not None
                    ),
                    default=None,
                ),
            }
        )
        if growth > rss_slack:
            problems.append(f"{name} RSS grew {growth:.1%} after the warm-up")
        if fds > fd_slack and not _EDGE.fullmatch(name):
            problems.append(f"{name} holds {fds} more files than after the warm-up")
        if t0 is not None and t1 is not None and t1 - t0 > max(task_floor, task_slack * t0):
            problems.append(f"{name} runs {t1 - t0} more trio tasks than after the warm-up")
    edges = [r for r in rows if _EDGE.fullmatch(r["name"])]
    fds = sum(r["fds_last"] - r["fds_after_warmup"] for r in edges)
    if fds > fd_slack:
        who = f"{edges[0]['name']} holds" if len(edges) == 1 else "the edges together hold"
        problems.append(f"{who} {fds} more files than after the warm-up")
    lost = sum(s["loss"]["lost"] for s in steps)
    dup = sum(s["loss"]["duplicated"] for s in steps)
    if lost:
        problems.append(f"lost {lost}")
    return {
        "ok": not problems,
        "problems": problems,
        "lost": lost,
        "duplicated": dup,
        "processes": rows,
    }
