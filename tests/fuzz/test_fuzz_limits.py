"""Fuzz the broker's new boundaries (security issue 11): the recover/hint rate limiter never
admits more than its buckets allow, and config validation of the exposure keys reports
problems instead of raising."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.config import load_config
from broker.errors import ConfigError
from broker.items import Item
from broker.ratelimit import ActionLimiter
from tests.fuzz.strategies import FUZZ, nasty_text

HINT = {"http-stream": {"action": "hint", "content": b""}}
SEND = {"http-stream": {"action": "send", "content": b"x"}}

events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False),
        st.sampled_from(["a", "b", "c"]),
        st.booleans(),
    ),
    max_size=200,
)


@FUZZ
@given(events, st.floats(min_value=0.01, max_value=50), st.floats(min_value=0.01, max_value=50))
def test_limiter_admits_at_most_burst_plus_rate(evs, per_channel, total):
    lim = ActionLimiter(1.0, per_channel, total, now=0.0)
    now = 0.0
    admitted: dict[str, int] = {}
    sends_in = sends_out = 0
    for dt, channel, is_hint in evs:
        now += dt
        item = Item(channel, HINT if is_hint else SEND)
        kept, refused = lim.filter([item], now)
        if is_hint:
            assert len(kept) + len(refused) == 1
            admitted[channel] = admitted.get(channel, 0) + len(kept)
        else:
            sends_in += 1
            sends_out += len(kept)
            assert not refused
    assert sends_out == sends_in  # sends are never limited
    for n in admitted.values():
        assert n <= 1 + per_channel + per_channel * now + 1e-6
    assert sum(admitted.values()) <= 1 + total + total * now + 1e-6
    assert lim.statistics().hint_refused == sum(1 for e in evs if e[2]) - sum(admitted.values())


@FUZZ
@given(
    st.sampled_from(
        [
            "publish_bind",
            "http_bind",
            "edge_bind",
            "broker_bind",
            "publish_jwt_iss",
            "publish_jwt_aud",
            "publish_jwt_key",
            "sig_key",
        ]
    ),
    nasty_text,
)
def test_exposure_keys_never_crash_validation(key, value):
    try:
        load_config(env={}, overrides={key: value})
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and "\n" not in p for p in exc.problems)
