"""broker.ratelimit: token buckets for recover and hint (fake time, no sockets)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.items import Item
from broker.ratelimit import ActionLimiter, TokenBucket, has_hint, without_hints


def hint(channel: str, *, also_ws_send: bool = False) -> Item:
    formats = {"http-stream": {"action": "hint", "content": b""}}
    if also_ws_send:
        formats["ws-message"] = {
            "action": "send",
            "type": "text",
            "content": b"x",
            "code": None,
            "reason": "",
        }
    return Item(channel, formats)


def send(channel: str) -> Item:
    return Item(channel, {"http-stream": {"action": "send", "content": b"x"}})


def test_bucket_burst_then_rate():
    b = TokenBucket(2.0, now=0.0)  # burst 3
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)  # one token per 0.5 s
    assert not b.take(0.4)  # time going backwards gives nothing
    assert b.full(100.0)


def test_recover_is_limited_globally():
    lim = ActionLimiter(1.0, 10.0, 100.0, now=0.0)
    assert [lim.allow_recover(0.0) for _ in range(5)] == [True, True, False, False, False]
    assert lim.allow_recover(1.0)
    assert lim.statistics().recover_refused == 3


def test_hints_limited_per_channel_and_sends_untouched():
    lim = ActionLimiter(1.0, 1.0, 100.0, now=0.0)  # per channel: burst 2
    items = [hint("a"), send("a"), hint("a"), hint("a"), hint("b"), send("a"), hint("a")]
    kept, refused = lim.filter(items, 0.0)
    assert [(i.channel, i.formats["http-stream"]["action"]) for i in kept] == [
        ("a", "hint"),
        ("a", "send"),
        ("a", "hint"),
        ("b", "hint"),
        ("a", "send"),
    ]
    assert len(refused) == 2 and lim.statistics().hint_refused == 2
    kept, refused = lim.filter([hint("a")], 1.0)
    assert len(kept) == 1 and not refused


def test_global_hint_bucket_caps_all_channels():
    lim = ActionLimiter(1.0, 1000.0, 4.0, now=0.0)  # global burst 5
    kept, refused = lim.filter([hint(f"ch{i}") for i in range(50)], 0.0)
    assert len(kept) == 5 and len(refused) == 45


def test_refused_hint_keeps_the_items_other_formats():
    lim = ActionLimiter(1.0, 0.001, 100.0, now=0.0)  # burst ~1
    kept, refused = lim.filter([hint("a", also_ws_send=True)] * 2, 0.0)
    assert len(refused) == 1 and len(kept) == 2
    assert set(kept[1].formats) == {"ws-message"}


def test_channel_table_is_bounded(monkeypatch):
    import broker.ratelimit as rl

    monkeypatch.setattr(rl, "MAX_CHANNELS", 10)
    lim = ActionLimiter(1.0, 1.0, 1e9, now=0.0)
    for i in range(100):
        lim.allow_hint(f"ch{i}", float(i))
    assert lim.statistics().channels_tracked <= 10


class _Formats(dict):
    """A dict subclass format (isinstance, not the exact type): counted as has_hint counts it."""


_fmt = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"action": st.sampled_from(["send", "hint", "close", None, 1, b"hint"])}
    ),
    st.builds(_Formats, st.fixed_dictionaries({"action": st.sampled_from(["hint", "send"])})),
    st.none(),
    st.text(max_size=3),
    st.lists(st.just("hint"), max_size=1),
)
_items = st.lists(
    st.builds(
        lambda fs: Item("c", dict(zip(["http-stream", "http-response", "ws-message"], fs))),
        st.lists(_fmt, max_size=3),
    ),
    max_size=6,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # twins: no state
@given(_items)
def test_first_hint_twins_agree_with_has_hint(twins, items):
    expected = next((i for i, item in enumerate(items) if has_hint(item)), -1)
    assert twins.first_hint(items) == expected


@given(_items)
def test_filter_scan_first_equals_item_by_item(items):
    # the compiled scan then the loop from the first hint: what the loop over every item gave
    fast = ActionLimiter(100.0, 2.0, 100.0, now=0.0)
    slow = ActionLimiter(100.0, 2.0, 100.0, now=0.0)
    kept, refused = [], []
    for item in items:
        cur: Item | None = item
        if has_hint(item) and not slow.allow_hint(item.channel, 0.0):
            refused.append(item)
            cur = without_hints(item)
            if cur is None:
                continue
        kept.append(cur)
    assert fast.filter(items, 0.0) == (kept, refused)
