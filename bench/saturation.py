"""The saturation search, sans-IO: which publish rates to try, and whether a step saturated.

A search publishes at rising rates (``start``, ``start x factor``, ...) against clients that stay
connected, and stops at the first step where the target saturated, so the report shows the
target's limit rather than the end of a fixed sweep.  A step is *saturated* when

* deliveries fell behind: fewer than ``on_time_min`` of the expected deliveries arrived within
  one second after publishing ended (the rest trailed behind, arrived late, or never came);
* the p99 publish-to-receive latency passed ``p99_bound_ms``;
* any message was lost (never arrived, after the bounded wait for stragglers).

* the target's publish path fell behind: the publisher missed its schedule (achieved under
  ``publisher_min`` of the offered rate) while it was mostly waiting for the target's answers
  (under ``publisher_cpu_max`` of a core).

A step where the *publisher* missed its schedule while busy itself, or where a client worker
used a full core, measured the
load generator, not the target: the search stops there too and says so (``stopped_by:
loadgen``), so the limit shown is a lower bound of the target's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SaturationRule:
    p99_bound_ms: float = 500.0
    on_time_min: float = 0.95
    publisher_min: float = 0.9
    publisher_cpu_max: float = 0.8  # a publisher this busy was held back by its own CPU
    worker_max: float = 0.95  # a client worker at this core share measured itself
    server_busy: float = 0.5  # saturated below this core share everywhere: say so


def rate_steps(start: float, factor: float, max_steps: int, max_rate: float = 0.0) -> list[float]:
    """``start``, ``start x factor``, ... (``max_steps`` of them, none above ``max_rate`` when set)."""
    if start <= 0 or factor <= 1 or max_steps < 1:
        raise ValueError("saturation search needs start > 0, factor > 1 and at least one step")
    out, r = [], start
    for _ in range(max_steps):
        if max_rate and r > max_rate * (1 + 1e-9):
            break
        out.append(round(r, 6))
        r *= factor
    return out


def verdict(step: dict, rule: SaturationRule) -> dict:
    """Whether ``step`` (a step record of ``run_load``) saturated the target, and why."""
    reasons: list[str] = []
    d = step["deliveries"]
    expected = d["expected"] or 0
    if expected and d["on_time"] / expected < rule.on_time_min:
        reasons.append(
            f"behind: {d['on_time'] / expected:.1%} of deliveries within 1 s of the last publish"
        )
    p99 = step["latency_ms"].get("p99")
    if p99 is not None and p99 > rule.p99_bound_ms:
        reasons.append(f"p99 {p99:,.0f} ms > {rule.p99_bound_ms:,.0f} ms")
    lost = step["loss"]["lost"]
    if lost:
        reasons.append(f"lost {lost:,}")
    pub = step["publish"]
    offered = pub.get("offered_per_s") or 0
    achieved = pub.get("rate_achieved") or 0
    notes = []
    if offered and achieved < rule.publisher_min * offered:
        cpu = pub.get("cpu_s")
        share = cpu / pub["elapsed_s"] if cpu is not None and pub.get("elapsed_s") else None
        if share is not None and share < rule.publisher_cpu_max:
            # the publisher waited for the target's answers: its publish path is the limit
            reasons.append(
                f"publish behind: the target took {achieved:,.0f} of {offered:,.0f} items/s "
                f"(publisher at {share:.2f} of a core)"
            )
        else:
            notes.append(f"publisher reached {achieved:,.0f} of {offered:,.0f} items/s")
    cpu = step.get("cpu", {})
    rows = cpu.get("publishing") or cpu.get("publish_phase", [])  # shares while publishing
    busy = [
        r
        for r in rows
        if r["role"] == "loadgen"
        and r["name"].startswith("bench-worker")
        and (r["cpu_util"] or 0) >= rule.worker_max
    ]
    if busy:
        notes.append(
            "client workers at a full core: "
            + ", ".join(f"{r['name']} {r['cpu_util']:.2f}" for r in busy)
        )
    server = [r["cpu_util"] or 0 for r in rows if r["role"] == "server"]
    idle_target = ""
    if reasons and server and max(server) < rule.server_busy:
        # saturated with no server process busy: on a shared machine, other work's share of
        # the CPU (run-queue waits) may have set this limit rather than the target's own cost
        idle_target = f"no server process above {max(server):.2f} of a core"
    return {
        "saturated": bool(reasons),
        "reasons": reasons,
        "loadgen_limited": bool(notes),
        "note": "; ".join(notes),
        "idle_target": idle_target,
    }


def summary(steps: list[dict], max_steps: int) -> dict:
    """The search's outcome: the best unsaturated step (the target's limit as measured) and the
    step that saturated it."""
    ok = [s for s in steps if not s["saturation"]["saturated"]]
    bad = [s for s in steps if s["saturation"]["saturated"]]
    best = max(ok, key=lambda s: s["deliveries"]["per_s"] or 0, default=None)
    if steps and steps[-1]["saturation"]["loadgen_limited"]:
        stopped_by = "loadgen"  # the load generator's limit (the target's may be higher)
    elif bad:
        stopped_by = "saturated"
    else:
        stopped_by = "max_steps" if len(steps) >= max_steps else "incomplete"
    first_bad = bad[0] if bad else None
    return {
        "stopped_by": stopped_by,
        "steps": len(steps),
        "limit_deliveries_per_s": best["deliveries"]["per_s"] if best else None,
        "limit_rate": best["rate"] if best else None,
        "limit_p99_ms": best["latency_ms"]["p99"] if best else None,
        "saturated_rate": first_bad["rate"] if first_bad else None,
        "saturated_deliveries_per_s": first_bad["deliveries"]["per_s"] if first_bad else None,
        "saturated_p99_ms": first_bad["latency_ms"]["p99"] if first_bad else None,
        "saturated_reasons": first_bad["saturation"]["reasons"] if first_bad else [],
    }
