"""The memory store's bound on all channels together (``history_max_total_bytes``): the payload
the history counts always matches what it holds, and past the bound the oldest messages of the
least recently written channels go first, each channel keeping its newest and its position
(no sockets, no sleeps)."""

from __future__ import annotations

import json
import random

import pytest
import trio

from broker.config import Config, validate
from broker.history import MESSAGE_OVERHEAD_BYTES, TRIM_TO, MemoryHistory
from broker.items import item_bytes, parse_http_publish
from broker.store import open_store
from broker.store.memory import MemoryStore


def items(channel: str, n: int, size: int = 10, start: int = 0):
    body = {
        "items": [
            {
                "channel": channel,
                "id": f"{channel}-{k}",
                "formats": {"http-stream": {"content": "x" * size}},
            }
            for k in range(start, start + n)
        ]
    }
    return parse_http_publish(json.dumps(body).encode())


def test_payload_count_matches_what_is_held_through_every_bound():
    rnd = random.Random(7)
    h = MemoryHistory(max_items=20, max_age_s=50.0, max_channels=8, max_bytes=300)
    names = [f"c{i}" for i in range(12)]
    now = 0.0
    for step in range(400):
        now += rnd.choice([0.1, 1.0, 5.0])
        ch = rnd.choice(names)
        batch = items(ch, rnd.randint(1, 5), size=rnd.randint(0, 60), start=step * 10)
        if rnd.random() < 0.5:
            h.append_many(batch, now)
        else:
            for it in batch:
                h.append(it, now)
    st = h.statistics()
    # what the channels hold (read inside: a replay of an evicted channel would create it)
    envs = [e for ch in h._channels.values() for e in ch.ring]
    assert st.evicted_channels and st.expired  # every bound was exercised
    assert st.payload_bytes == sum(item_bytes(e) for e in envs)
    assert st.retained == len(envs)
    assert st.trimmed == 0  # no total bound here


def test_past_the_bound_the_least_recently_written_channels_lose_their_oldest_first():
    per = 10 + MESSAGE_OVERHEAD_BYTES  # one message's estimate
    h = MemoryHistory(max_items=1000, max_total_bytes=100 * per)
    h.append_many(items("old", 40), 1.0)
    h.append_many(items("mid", 40, start=100), 2.0)
    h.append_many(items("new", 19, start=200), 3.0)
    assert h.statistics().trimmed == 0  # 99 messages: within the bound
    last_old = h.position("old")
    h.append_many(items("new", 2, start=300), 4.0)  # 101: over, trimmed to 90
    st = h.statistics()
    assert h.estimated_bytes() <= 100 * per * TRIM_TO
    assert st.retained == 90 and st.trimmed == 11
    old = h.replay("old", after_seq=0).items
    assert [e.id for e in old] == [f"old-{k}" for k in range(11, 40)]  # its 11 oldest went
    assert (
        len(h.replay("mid", after_seq=0).items) == 40
        and len(h.replay("new", after_seq=0).items) == 21
    )
    # the position is kept: a cursor on the newest still resumes; one before the cut does not
    assert h.position("old") == last_old
    assert h.replay("old", after_id="old-39").complete
    assert not h.replay("old", after_id="old-3").complete


def test_each_channel_keeps_its_newest_message():
    per = 10 + MESSAGE_OVERHEAD_BYTES
    h = MemoryHistory(max_items=1000, max_total_bytes=5 * per)
    for i in range(8):
        h.append_many(items(f"c{i}", 3), float(i))
    for i in range(8):
        kept = h.replay(f"c{i}", after_seq=0).items
        assert kept and kept[-1].id == f"c{i}-2"
    # eight channels of one message each cannot go under five messages' worth: the newest stay
    assert h.statistics().retained == 8


def test_the_store_logs_the_trim_once_a_minute(caplog):
    per = 10 + MESSAGE_OVERHEAD_BYTES
    store = MemoryStore(MemoryHistory(max_items=1000, max_total_bytes=50 * per))

    async def publish() -> None:
        for k in range(10):  # 1 s apart in wall time (``now``): one warning
            await store.append_batch(items(f"c{k}", 20, start=k * 100), 1000.0 + k)
        await store.append_batch(items("late", 20), 1000.0 + 70)  # a minute on: another

    with caplog.at_level("WARNING", logger="broker.store.memory"):
        trio.run(publish)
    warnings = [
        r.getMessage() for r in caplog.records if "history_max_total_bytes" in r.getMessage()
    ]
    assert len(warnings) == 2  # the first trim, then a minute later
    assert store.history.trimmed > 100
    assert f"({store.history.trimmed} in all)" in warnings[-1]


def test_config_bound_validated_and_wired():
    assert Config().history_max_total_bytes == 1 << 30
    assert not [p for p in validate(Config(history_max_total_bytes=0)) if "total" in p]
    assert any(
        "history_max_total_bytes" in p for p in validate(Config(history_max_total_bytes=1000))
    )
    store = open_store(Config(history_max_total_bytes=64 << 20))
    assert store.history.max_total_bytes == 64 << 20  # type: ignore[attr-defined]


def test_no_bound_when_zero():
    h = MemoryHistory(max_items=1000, max_total_bytes=0)
    h.append_many(items("c", 500), 1.0)
    assert h.statistics().trimmed == 0 and h.statistics().retained == 500
    with pytest.raises(ValueError):
        MemoryHistory(max_total_bytes=-1)
