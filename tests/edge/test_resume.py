"""edge.resume.Catchup: one session catching up from a cursor (sans-IO, no sockets)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from broker.history import MemoryHistory
from broker.items import Item
from broker.wire import Envelope
from edge.resume import Catchup


def history(n: int, max_items: int = 1000, ids=True) -> MemoryHistory:
    h = MemoryHistory(max_items=max_items, new_epoch=lambda: "E")
    for i in range(1, n + 1):
        h.append(Item(channel="c", formats={}, id=f"m{i}" if ids else None), 0.0)
    return h


def reply(h: MemoryHistory, req: dict) -> dict:
    r = h.replay(req["channel"], req["epoch"], req["after_seq"], req["after_id"], req["limit"])
    return {"epoch": r.epoch, "last_seq": r.last_seq, "complete": r.complete,
            "items": [e.to_map() for e in r.items]}


def drive(c: Catchup, h: MemoryHistory) -> list[int]:
    out = []
    while (req := c.request()) is not None:
        out += [e.seq for e in c.on_reply(reply(h, req))]
    return out


@pytest.mark.parametrize("n, cursor, limit, expect, failed", [
    (5, "m2", 1000, [3, 4, 5], False),        # publisher id
    (5, "E:3", 1000, [4, 5], False),          # broker cursor epoch:seq
    (5, "m5", 1000, [], False),               # up to date
    (2500, "m10", 1000, list(range(11, 2501)), False),  # paged (3 pages)
    (5, "unknown", 1000, [], True),           # history cannot answer
    (5, "OTHER:2", 1000, [], True),           # another epoch
    (0, "whatever", 1000, [], False),         # channel never had a message
])
def test_catchup_table(n, cursor, limit, expect, failed):
    h = history(n, max_items=5000)
    c = Catchup("c", cursor, limit=limit)
    assert drive(c, h) == expect
    assert c.failed is failed


def test_cursor_older_than_retained_history_fails():
    h = history(20, max_items=10)
    c = Catchup("c", "m3")
    assert drive(c, h) == [] and c.failed


def test_target_beyond_history_asks_for_more_then_live_dedupes():
    h = history(3)
    c = Catchup("c", "m1")
    assert drive(c, h) == [2, 3]
    for i in range(4, 7):  # published while the replay was answered; not yet live here
        h.append(Item(channel="c", formats={}, id=f"m{i}"), 0.0)
    assert c.on_target("E", 6) is True
    assert drive(c, h) == [4, 5, 6]
    assert c.on_target("E", 6) is False
    live = [Envelope("c", s, "E", {}) for s in (5, 6, 7)]
    assert [c.accept_live(e) for e in live] == [False, False, True]


def test_failed_catchup_lets_every_live_message_through():
    c = Catchup("c", "nope")
    c.on_reply({"epoch": "E", "last_seq": 4, "complete": False, "items": []})
    assert c.failed and c.request() is None
    assert c.accept_live(Envelope("c", 1, "E", {}))


def test_epoch_change_mid_catchup_skips_to_the_new_epoch():
    c = Catchup("c", "m1", limit=2)
    c.on_reply({"epoch": "E", "last_seq": 9, "complete": True,
                "items": [Envelope("c", s, "E", {}).to_map() for s in (2, 3)]})
    got = c.on_reply({"epoch": "F", "last_seq": 2, "complete": False,
                      "items": [Envelope("c", s, "F", {}).to_map() for s in (1, 2)]})
    assert [e.seq for e in got] == [1, 2] and c.epoch == "F" and c.skipped


@given(n=st.integers(0, 60), start=st.integers(0, 60), limit=st.integers(1, 7),
       late=st.integers(0, 10))
def test_never_loses_never_duplicates(n, start, limit, late):
    """Replay + live hand-over delivers exactly the messages after the cursor, in order."""
    h = history(n)
    cursor = f"m{start}" if 1 <= start <= n else "E:0"
    c = Catchup("c", cursor, limit=limit)
    got = drive(c, h)
    first_live = n + 1
    for i in range(n + 1, n + late + 1):
        h.append(Item(channel="c", formats={}, id=f"m{i}"), 0.0)
    # live delivery resumes somewhere at or before the broker's last seq
    live_from = max(1, first_live - 2)
    if c.on_target("E", live_from - 1):
        got += drive(c, h)
    got += [s for s in range(live_from, n + late + 1) if c.accept_live(Envelope("c", s, "E", {}))]
    base = start if 1 <= start <= n else 0
    assert got == list(range(base + 1, n + late + 1))
