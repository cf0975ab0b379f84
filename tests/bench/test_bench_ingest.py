"""``python -m bench ingest`` with each PUSH framing: every item counted back off the fan-out."""

from __future__ import annotations

import msgpack
import pytest

from bench.scenarios import ingest_frames
from broker.items import parse_pull_frame
from tests.bench.benchrun import run_bench


def test_ingest_frames_are_valid_publish_input():
    payloads = [
        {"channel": "bench", "id": f"i{n}", "formats": {"http-stream": {"content": f"item {n}\n"}}}
        for n in range(7)
    ]
    for publisher, batch, nframes in [
        ("zmq", 100, 7),
        ("zmq-tnetstring", 100, 7),
        ("zmq-msgpack", 3, 3),
        ("zmq-msgpack", 1, 7),
    ]:
        frames, per_frame = ingest_frames(publisher, payloads, batch)
        assert len(frames) == nframes
        items = [i for f in frames for i in parse_pull_frame(f)[0]]
        assert [i.id for i in items] == [f"i{n}" for n in range(7)], publisher
    assert ingest_frames("zmq-msgpack", payloads, 3)[0][0] == b"B" + msgpack.packb(payloads[:3])


@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.parametrize("publisher", ["zmq-msgpack", "zmq-tnetstring"])
def test_ingest_runs(tmp_path, publisher):
    # enough items that the broker's CPU (counted in 10-ms clock ticks) cannot read as none:
    # 3,000 took ~30 ms and once got no tick in CI
    record, _ = run_bench(
        tmp_path / "ingest.json",
        *("ingest", "--items", "20000", "--publisher", publisher, "--batch", "50"),
        timeout=80,
    )
    result = record["result"]
    assert result["ok"], result.get("error")
    assert result["received"] == 20000
    assert result["items_per_broker_cpu_s"] > 0
