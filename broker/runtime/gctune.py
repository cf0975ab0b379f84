"""The collector policy of a long-running gripcast process (broker and edges alike).

``tune_gc(threshold)``, called once after start-up and before serving: a full collection, then
``gc.freeze()`` so that what start-up made (modules, config, routes) is never walked again by
later collections, then the process's thresholds.  The broker's and the edges' figures for it
are in bench/RESULTS.md ("Connection rate, fourth round"; the ninth session's broker history).
"""

from __future__ import annotations

import gc


def tune_gc(threshold: tuple[int, int, int]) -> None:
    """Freeze what exists out of the collector's walks, then set ``threshold``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)
