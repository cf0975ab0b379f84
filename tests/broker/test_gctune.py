"""``broker.runtime.gctune.tune_gc``: start-up objects frozen, thresholds set (the test puts the
process's collector back as it was)."""

from __future__ import annotations

import gc

from broker.runtime.gctune import tune_gc


def test_tune_gc_freezes_what_exists_and_sets_the_thresholds():
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    keep = [object(), {"a": [1]}]  # alive at the call: frozen with the rest
    try:
        tune_gc((12_345, 11, 9))
        assert gc.get_threshold() == (12_345, 11, 9)
        assert gc.get_freeze_count() > frozen_before
        assert gc.get_count()[0] < 100  # a full collection ran just before the freeze
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert keep
