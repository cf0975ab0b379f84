"""Turn workers' latency histograms and counters into figures (pure functions, no I/O)."""

from __future__ import annotations

from bench.swarm import SEC_SHIFT, bucket_value_ms

MASK = (1 << SEC_SHIFT) - 1


def merge_hists(hists: list[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, v in h.items():
            out[k] = out.get(k, 0) + v
    return out


def percentiles(buckets: dict[int, int], ps=(50, 90, 99)) -> dict[str, float | None]:
    """Percentiles (ms) of a {bucket: count} histogram."""
    total = sum(buckets.values())
    out: dict[str, float | None] = {f"p{p}": None for p in ps}
    if not total:
        return out
    items = sorted(buckets.items())
    for p in ps:
        target = total * p / 100.0
        acc = 0
        for b, n in items:
            acc += n
            if acc >= target:
                out[f"p{p}"] = round(bucket_value_ms(b), 3)
                break
    return out


def summarize(hist: dict[int, int]) -> dict:
    """Overall latency percentiles and the per-second series (deliveries/s and latency)."""
    overall: dict[int, int] = {}
    per_sec: dict[int, dict[int, int]] = {}
    for key, n in hist.items():
        sec, b = key >> SEC_SHIFT, key & MASK
        overall[b] = overall.get(b, 0) + n
        per_sec.setdefault(sec, {})
        per_sec[sec][b] = per_sec[sec].get(b, 0) + n
    series = []
    for sec in sorted(per_sec):
        h = per_sec[sec]
        pc = percentiles(h, (50, 99))
        series.append(
            {
                "t": sec,
                "deliveries": sum(h.values()),
                "p50_ms": pc["p50"],
                "p99_ms": pc["p99"],
                "max_ms": round(bucket_value_ms(max(h)), 3),
            }
        )
    return {
        "latency_ms": percentiles(overall, (50, 90, 99)),
        "series": series,
        "deliveries": sum(overall.values()),
    }
