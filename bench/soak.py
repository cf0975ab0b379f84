"""The soak's verdict, sans-IO: does any server process's RSS or open-file count keep growing,
and was anything lost, over a long run of connects, disconnects, resumes and publishes?

Each soak step (one sample interval) records every server process's RSS and open file
descriptors after it (``resources``).  The first ``warmup_steps`` are the warm-up; after it, a
process *grows* when its last RSS is more than ``rss_slack`` above its RSS at the end of the
warm-up, or its last fd count more than ``fd_slack`` above it.  Processes are matched by name
(an edge restarted by ``gripcast run`` keeps its name).
"""

from __future__ import annotations


def verdict(
    steps: list[dict], warmup_steps: int = 1, rss_slack: float = 0.10, fd_slack: int = 16
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
        rows.append(
            {
                "name": name,
                "rss_kib_after_warmup": b["rss_kib"],
                "rss_kib_last": e["rss_kib"],
                "rss_growth": round(growth, 4),
                "fds_after_warmup": b["fds"],
                "fds_last": e["fds"],
            }
        )
        if growth > rss_slack:
            problems.append(f"{name} RSS grew {growth:.1%} after the warm-up")
        if fds > fd_slack:
            problems.append(f"{name} holds {fds} more files than after the warm-up")
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
