"""The trio task count of a process as a Prometheus gauge, read when ``/metrics`` is scraped.

``trio.lowlevel.current_statistics().tasks_living`` is the number of tasks alive in the
process's trio run right now (every connection handler, writer and background loop): kept by
trio itself, so reading it costs nothing between scrapes.  A count that keeps growing while the
load stays the same is a task leak; the soak (``python -m bench soak``) samples it each step.
Scraped outside a trio run (no run to count), the collector yields nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


def trio_tasks_living() -> int | None:
    """Tasks alive in the current trio run, or None outside one."""
    try:
        return trio.lowlevel.current_statistics().tasks_living
    except RuntimeError:
        return None


class TrioTaskCollector(Collector):
    """``<prefix>trio_tasks``: tasks alive in this process's trio run."""

    def __init__(self, prefix: str) -> None:
        self.name = prefix + "trio_tasks"

    def collect(self) -> Iterator[Metric]:
        n = trio_tasks_living()
        if n is not None:
            yield GaugeMetricFamily(
                self.name, "Tasks alive in the process's trio run (a leak grows it).", value=n
            )
