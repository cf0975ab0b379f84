"""Slow readers against a real gripcast cluster, kept small: 10% of the clients read at a
trickle in the second step; they are counted apart, catch up (resuming with their cursor when
the edge cuts them) and lose nothing; the others lose nothing either."""

from __future__ import annotations

import pytest

from tests.bench.benchrun import gripcast_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_slow_readers_gripcast(tmp_path):
    run, proc = gripcast_run(
        tmp_path / "slow.json",
        *("slow", "--target", "gripcast", "--clients", "100", "--rate", "20", "--duration", "3"),
        *("--payload-bytes", "2048", "--slow-rate", "1024", "--warmup", "10"),
    )
    assert run["config"]["resume"] and run["config"]["slow_every"] == 10
    first, second = run["steps"]
    assert (first["slowed"], second["slowed"]) == (False, True)
    for st in (first, second):
        slow = st["slow_readers"]
        assert slow["clients"] == 10
        assert st["deliveries"]["expected"] == 90 * st["publish"]["per_channel"]
        assert st["deliveries"]["received"] == st["deliveries"]["expected"]
        assert st["loss"]["lost"] == st["loss"]["duplicated"] == 0
        assert slow["lost"] == 0, slow  # caught up (resumed with the cursor if cut)
        assert slow["received"] >= slow["expected"]
        assert 0 <= slow["resumed"] <= slow["drops"]  # every resume follows a cut
        roles = st["loadgen_roles"]  # the slow readers read in a worker of their own
        assert roles["slow_workers"]["processes"] == 1 and roles["workers"]["processes"] == 2
    assert run["config"]["slow_apart"]
    effect = run["slow_effect"]
    assert effect["fast_throughput_kept"] is not None and "goal_met" in effect
    assert proc.returncode == 0, proc.stderr[-3000:]
