"""``InstructCache``'s templates (a channel per user): an answer that differs only in its one
plain ``Grip-Channel`` value reuses one parse, and gives exactly the hold a full parse gives."""

from __future__ import annotations

import pytest

from edge.grip.cache import TEMPLATE_CHANNEL, InstructCache, decode_headers
from edge.grip.instruct import parse_instruct, with_body

SSE = (b"Content-Type", b"text/event-stream")
HOLD = (b"Grip-Hold", b"stream")


def full(raw, body=b"", prefix="", extra=(), stream_body=None):
    hold = parse_instruct(200, "OK", decode_headers(raw), body, prefix=prefix, extra_channels=extra)
    if stream_body is not None and (
        hold.mode == "stream" or (hold.mode is None and hold.next_link)
    ):
        hold = with_body(hold, stream_body)
    return hold


CASES = {
    "plain": ([SSE, HOLD, (b"Grip-Channel", b"user-17")], {}),
    "prefix": ([SSE, HOLD, (b"Grip-Channel", b"doc:42")], {"prefix": "app."}),
    "sub= channels": ([SSE, HOLD, (b"Grip-Channel", b"u1")], {"extra": ("all", "news")}),
    "a sub= duplicate": ([SSE, HOLD, (b"Grip-Channel", b"news")], {"extra": ("all", "news")}),
    "keep-alive, link, meta": (
        [
            SSE,
            HOLD,
            (b"Grip-Keep-Alive", b"\\n; format=cstring; timeout=20"),
            (b"Grip-Link", b"</next?u=9>; rel=next"),
            (b"Grip-Set-Meta", b"user=9"),
            (b"Grip-Channel", b"u9"),
            (b"X-App", b"u9"),
        ],
        {"stream_body": b"data: u9\n\n"},
    ),
    "response hold": ([(b"Grip-Hold", b"response"), (b"Grip-Channel", b"u3")], {}),
    "prev-id": ([SSE, HOLD, (b"Grip-Channel", b"u4; prev-id=7")], {}),
    "a list": ([SSE, HOLD, (b"Grip-Channel", b"u5, u6")], {}),
    "two headers": ([SSE, HOLD, (b"Grip-Channel", b"u7"), (b"Grip-Channel", b"u8")], {}),
    "a build-id filter": (
        [SSE, HOLD, (b"Grip-Channel", b"u9; filter=build-id")],
        {"stream_body": b"100%%\n"},
    ),
    "the placeholder itself": ([SSE, HOLD, (b"Grip-Channel", TEMPLATE_CHANNEL.encode())], {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_cached_hold_is_the_full_parse(case):
    raw, kw = CASES[case]
    cache = InstructCache()
    args = dict(prefix=kw.get("prefix", ""), extra_channels=kw.get("extra", ()))
    sb = kw.get("stream_body")
    for _ in range(2):  # the parse, then the cached one
        got = cache.instruct(200, "OK", raw, b"", stream_body=sb, **args)
        assert got == full(raw, b"", kw.get("prefix", ""), kw.get("extra", ()), sb)


def test_channels_of_one_shape_share_one_parse_and_keep_their_own_names():
    cache = InstructCache()
    holds = []
    for i in range(50):
        raw = [SSE, HOLD, (b"Grip-Channel", b"user-%d" % i)]
        holds.append(cache.instruct(200, "OK", raw, b"", prefix="p.", extra_channels=("all",)))
    assert [h.channels[0].name for h in holds] == [f"p.user-{i}" for i in range(50)]
    assert all(h.channels[1].name == "p.all" for h in holds)
    templates = [k for k in cache._holds if k[-1] == TEMPLATE_CHANNEL]
    assert len(templates) == 1  # one parse for the shape
    assert holds[7] == full([SSE, HOLD, (b"Grip-Channel", b"user-7")], prefix="p.", extra=("all",))


def test_a_json_instruct_is_never_a_template():
    cache = InstructCache()
    raw = [(b"Content-Type", b"application/grip-instruct"), (b"Grip-Channel", b"u1")]
    body = b'{"hold": {"mode": "response", "channels": [{"name": "j1"}]}}'
    got = cache.instruct(200, "OK", raw, body, prefix="", extra_channels=())
    assert got == full(raw, body)
    assert not [k for k in cache._holds if k[-1] == TEMPLATE_CHANNEL]
