"""The saturation search against a real gripcast cluster, kept small: rising rate steps with
the clients kept connected, each step counted on its own (its own seqs, zero loss), and the
summary says why the search stopped."""

from __future__ import annotations

import pytest

from tests.bench.benchrun import gripcast_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_saturation_steps_gripcast(tmp_path):
    run, proc = gripcast_run(
        tmp_path / "sat.json",
        *("fanout", "--target", "gripcast", "--clients", "40", "--rate", "5", "--duration", "2"),
        *("--saturate", "--factor", "2", "--max-steps", "3", "--p99-bound-ms", "5000"),
        *("--warmup", "10"),
    )
    steps = run["steps"]
    assert [s["rate"] for s in steps] == [5, 10, 20]
    base = 0
    for s in steps:
        per = s["publish"]["per_channel"]
        assert per == int(s["rate"] * 2)
        assert s["publish"]["base"] == base  # each step publishes seqs after the last one's
        base += per
        assert s["deliveries"]["expected"] == s["deliveries"]["received"] == 40 * per
        assert s["loss"]["lost"] == s["loss"]["duplicated"] == s["late"]["count"] == 0
        assert not s["saturation"]["saturated"]
    assert run["saturation"]["stopped_by"] in ("max_steps", "loadgen")
    assert run["saturation"]["limit_rate"] in (5, 10, 20)
    try:
        import matplotlib  # noqa: F401  (the bench extra)
    except ImportError:
        pass
    else:
        assert (tmp_path / "sat-saturation.png").exists()
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(("publisher", "batch"), [("http", "10"), ("zmq", "10")])
def test_many_channels_smoke_gripcast(tmp_path, publisher, batch):
    """20 channels of 2 clients, publishes spread round the channels (HTTP in batches of 10
    items, or ZeroMQ in bursts of 10 frames), two rate steps: every client gets exactly its channel's messages."""
    run, proc = gripcast_run(
        tmp_path / "ch.json",
        *("channels", "--smoke", "--target", "gripcast", "--publisher", publisher),
        *("--batch", batch, "--max-steps", "2", "--factor", "2", "--p99-bound-ms", "5000"),
        *("--warmup", "10", "--duration", "4"),  # a 2 s smoke step reads as saturated under load
    )
    assert run["config"]["clients"] == 40 and run["config"]["channels"] == 20
    assert run["config"]["creader"] and run["creader"].endswith(".so")  # the C reader counted
    assert [s["msgs_per_s"] for s in run["steps"]] == [40, 80]
    for s in run["steps"]:
        pub = s["publish"]
        assert len(pub["published"]) == 20
        assert pub["items"] == sum(pub["published"].values())
        assert pub["items_per_call"] == 10  # a POST, or a burst of ZeroMQ frames
        assert s["deliveries"]["expected"] == s["deliveries"]["received"] == 2 * pub["items"]
        assert s["loss"]["lost"] == s["loss"]["duplicated"] == 0
    assert proc.returncode == 0, proc.stderr[-3000:]
