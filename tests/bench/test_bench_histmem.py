"""``python -m bench.histmem``: broker memory per retained message (docs/capacity.md's
``m_item``), measured in a process of its own; the bodies it publishes parse as the API's."""

from __future__ import annotations

import json

import pytest

from bench import histmem
from broker.items import parse_http_publish


def test_bodies_spread_over_the_channels_with_or_without_ids():
    names = ["a", "b", "c"]
    items = parse_http_publish(histmem.body(0, names, payload=5, ids=True))
    assert len(items) == histmem.BATCH
    assert [i.channel for i in items[:4]] == ["a", "b", "c", "a"]
    assert items[7].id == "msg-7"
    assert items[7].formats["http-stream"]["content"] == b"xxxxx7\n"
    doc = json.loads(histmem.body(100, names, payload=0, ids=False))
    assert all("id" not in i for i in doc["items"])


def test_rss_is_read():
    assert histmem.rss_bytes() > 1 << 20


def test_a_retained_message_costs_its_payload_and_more():
    """Small runs read coarse (RSS moves in pages), so only the order of things is checked:
    each retained message costs something, and 2 KiB more payload costs more."""
    small = histmem.measure_apart(20_000, 1_000, 0, True)
    big = histmem.measure_apart(20_000, 1_000, 2048, True)
    assert 100 < small < 4096
    assert big > small + 1024


def test_main_prints_both_forms(capsys):
    assert histmem.main(["--messages", "2000", "--channels", "10"]) == 0
    out = capsys.readouterr().out
    assert "with publisher ids: RSS per retained message" in out
    assert "without publisher ids: RSS per retained message" in out


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        histmem.main(["--messages", "10"])
