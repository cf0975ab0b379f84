"""A histogram counted in plain ints (sans-IO), exported to Prometheus at scrape time.

Hot paths call ``observe(value, n)``: one ``bisect`` and two additions, no locks, no
prometheus-client objects.  ``family(name, doc)`` builds a prometheus ``HistogramMetricFamily``
from the counts when ``/metrics`` is scraped (``broker.ops.metrics``, ``edge.ops.metrics``).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily

# seconds: 0.5 ms .. 10 s (publish-to-delivery latency, store latency)
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True, slots=True)
class HistogramStatistics:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket (not cumulative); the last one is +Inf
    count: int
    total: float


class IntHistogram:
    __slots__ = ("bounds", "counts", "count", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("bounds must be sorted and not empty")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """Record ``n`` observations of ``value`` (negative values count as 0)."""
        if value < 0:
            value = 0.0
        self.counts[bisect_left(self.bounds, value)] += n
        self.count += n
        self.total += value * n

    def statistics(self) -> HistogramStatistics:
        return HistogramStatistics(self.bounds, tuple(self.counts), self.count, self.total)

    def family(
        self, name: str, doc: str, labels: dict[str, str] | None = None
    ) -> HistogramMetricFamily:
        """A prometheus ``HistogramMetricFamily`` with the cumulative buckets."""
        from prometheus_client.core import HistogramMetricFamily

        buckets = []
        acc = 0
        for bound, c in zip(self.bounds, self.counts):
            acc += c
            buckets.append((_fmt(bound), acc))
        buckets.append(("+Inf", self.count))
        labels = labels or {}
        fam = HistogramMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), buckets, self.total)
        return fam


def _fmt(bound: float) -> str:
    return repr(float(bound))
