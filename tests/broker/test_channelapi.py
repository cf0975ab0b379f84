"""The channel API, sans-IO parts and the store queries over the memory store (no sockets):
request parsing, history answers (cursor, truncation, paging, binary content), channel state
and the live-channel listing (counts, age, bounds), the publish ids, the command socket."""

import base64
import json

import pytest
import trio

from broker.history import MemoryHistory
from broker.ingest import commands, httpapi, tnetstring
from broker.items import Item, parse_http_publish
from broker.ops import channelapi
from broker.ops.channelapi import (
    ChannelApi,
    ChannelQuery,
    ChannelsQuery,
    ItemsQuery,
    QueryError,
    parse_http,
)
from broker.ops.stats import StatsEncoder
from broker.store.memory import MemoryStore


def item(channel="c", text="x", id=None, body=None):
    formats = {"http-stream": {"content": body if body is not None else text.encode()}}
    return Item(channel=channel, formats=formats, id=id)


class Source:
    def __init__(self, max_items=1000):
        self.store = MemoryStore(MemoryHistory(max_items=max_items, new_epoch=lambda: "ep"))
        self.live: set[str] = set()
        self.edge_stats: StatsEncoder | None = StatsEncoder(conn_send=False)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def setup(max_items=1000, n=0, channel="c", ids=False):
    src = Source(max_items)
    clock = Clock()
    items = [item(channel, f"m{i}", id=f"p{i}" if ids else None) for i in range(1, n + 1)]
    trio.run(src.store.append_batch, items, clock.t)
    return src, clock, ChannelApi(src, clock)


def run(api, q):
    return trio.run(api.run, q)


def http(api, target, method="GET", denied=None):
    return trio.run(api.http, method, target, denied)


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,query",
    [
        ("/channels", ChannelsQuery()),
        ("/channels/", ChannelsQuery()),
        ("/channels?prefix=chat.&limit=5", ChannelsQuery("chat.", None, 5)),
        ("/channels?after=b", ChannelsQuery("", "b", 100)),
        ("/channels/room", ChannelQuery("room")),
        ("/channels/a%2Fb", ChannelQuery("a/b")),
        ("/channels/a/b", ChannelQuery("a/b")),
        ("/channels/r%C3%A9/items", ItemsQuery("ré")),
        ("/channels/x/items?after=ep:3&limit=1000", ItemsQuery("x", "ep:3", 1000)),
        ("/channels/x/items?after=my-id", ItemsQuery("x", "my-id", 100)),
        ("/channels/x%2Fitems", ChannelQuery("x/items")),
    ],
)
def test_parse_http(target, query):
    assert channelapi.match_path(target)
    assert parse_http("GET", target) == query


@pytest.mark.parametrize(
    "target", ["/", "/publish", "/channelsx", "/channels/a/presence", "/status"]
)
def test_not_ours(target):
    assert not channelapi.match_path(target)


@pytest.mark.parametrize(
    "target,status,reason",
    [
        ("/channels/x/items?limit=0", 400, "Invalid limit: must be an integer from 1 to 1000."),
        ("/channels/x/items?limit=1001", 400, "Invalid limit: must be an integer from 1 to 1000."),
        ("/channels/x/items?limit=-1", 400, "Invalid limit"),
        ("/channels/x/items?limit=1e3", 400, "Invalid limit"),
        ("/channels/x/items?limit=99999999999999999999", 400, "Invalid limit"),
        ("/channels?limit=5000", 400, "Invalid limit"),
        ("/channels/x/items?after=", 400, "Invalid after: must be a non-empty id."),
        ("/channels/x/items?after=a%0Ab", 400, "Invalid after: control character."),
        ("/channels/x/items?after=" + "a" * 1100, 400, "longer than 1024 bytes"),
        ("/channels/x/items?after=%FF", 400, "Invalid query string."),
        ("/channels/x/items?after=a&after=b", 400, "given twice"),
        ("/channels/x/items?bogus=1", 400, "Unknown parameter 'bogus'"),
        ("/channels/x?limit=3", 400, "Unknown parameter 'limit'"),
        ("/channels/a%00b", 400, "Invalid channel: NUL byte."),
        ("/channels/%FF", 400, "Invalid channel: not UTF-8."),
        ("/channels/" + "c" * 1100, 400, "Invalid channel: longer than 1024 bytes."),
        ("/channels?" + "&".join(f"k{i}=1" for i in range(20)), 400, "Invalid query string."),
    ],
)
def test_bad_requests(target, status, reason):
    with pytest.raises(QueryError) as info:
        parse_http("GET", target)
    assert info.value.status == status and reason in info.value.reason


def test_method_not_allowed():
    _, _, api = setup()
    a = http(api, "/channels/x", method="POST")
    assert (a.status, a.body, a.headers) == (
        405,
        "Method not allowed: POST.\n",
        (("Allow", "GET"),),
    )
    assert api.statistics().refused == 1


def test_denied_is_401_without_touching_the_store():
    src, _, api = setup()
    a = http(api, "/channels/x/items", denied="Authorization required.")
    assert (a.status, a.body) == (401, "Authorization required.\n")
    assert ("WWW-Authenticate", "Bearer") in a.headers
    assert src.store.statistics().channels == 0


# -- history ---------------------------------------------------------------------------------------


def test_history_without_cursor_is_everything_retained():
    _, _, api = setup(n=3)
    doc = run(api, ItemsQuery("c"))
    assert [i["id"] for i in doc["items"]] == ["ep:1", "ep:2", "ep:3"]
    assert [i["formats"]["http-stream"]["content"] for i in doc["items"]] == ["m1", "m2", "m3"]
    assert (doc["truncated"], doc["more"], doc["last_seq"]) == (False, False, 3)


@pytest.mark.parametrize("after", ["ep:2", "p2"])
def test_history_after_a_cursor(after):
    _, _, api = setup(n=5, ids=True)
    doc = run(api, ItemsQuery("c", after))
    assert [i["seq"] for i in doc["items"]] == [3, 4, 5]
    assert [i["publisher_id"] for i in doc["items"]] == ["p3", "p4", "p5"]
    assert doc["items"][0]["id"] == "ep:3"
    assert not doc["truncated"]


def test_history_paging_with_next():
    _, _, api = setup(n=5)
    doc = run(api, ItemsQuery("c", None, 2))
    assert ([i["seq"] for i in doc["items"]], doc["more"], doc["next"]) == ([1, 2], True, "ep:2")
    doc = run(api, ItemsQuery("c", doc["next"], 2))
    assert [i["seq"] for i in doc["items"]] == [3, 4]
    doc = run(api, ItemsQuery("c", doc["next"], 2))
    assert ([i["seq"] for i in doc["items"]], doc["more"]) == ([5], False)
    assert "next" not in doc


def test_big_items_are_paged_by_bytes():
    src, clock, api = setup()
    trio.run(src.store.append_batch, [item(body=b"x" * 400_000) for _ in range(5)], clock.t)
    doc = run(api, ItemsQuery("c", None, 1000))
    assert ([i["seq"] for i in doc["items"]], doc["more"], doc["next"]) == ([1, 2], True, "ep:2")
    big = channelapi.items_answer(
        ItemsQuery("c"), trio.run(src.store.replay, "c", None, 0, None, 9, 0), 10
    )
    assert [i["seq"] for i in big["items"]] == [1]  # at least one, however big


@pytest.mark.parametrize("after", ["ep:1", "gone-id", "other-epoch:4", "ep:99"])
def test_truncated_when_history_cannot_cover_the_cursor(after):
    _, _, api = setup(max_items=3, n=6)  # keeps 4, 5, 6
    doc = run(api, ItemsQuery("c", after))
    assert doc["truncated"] is True
    assert [i["seq"] for i in doc["items"]] == [4, 5, 6]  # the oldest kept: the origin falls back


def test_truncated_without_cursor_when_the_start_is_gone():
    _, _, api = setup(max_items=3, n=6)
    assert run(api, ItemsQuery("c"))["truncated"] is True


def test_cursor_at_the_end_is_empty_and_complete():
    _, _, api = setup(n=2)
    doc = run(api, ItemsQuery("c", "ep:2"))
    assert (doc["items"], doc["truncated"], doc["more"]) == ([], False, False)


def test_binary_content_is_base64_under_the_bin_key():
    src, clock, api = setup()
    raw = b"\xff\x00\xfe"
    trio.run(src.store.append_batch, [item(body=raw)], clock.t)
    fmt = run(api, ItemsQuery("c"))["items"][0]["formats"]["http-stream"]
    assert "content" not in fmt and base64.b64decode(fmt["content-bin"]) == raw


def test_history_answer_is_what_was_published_over_http():
    """Round trip: a publish body's formats come back as the same JSON fields."""
    src, clock, api = setup()
    body = {
        "items": [
            {
                "channel": "c",
                "id": "a1",
                "formats": {
                    "http-response": {"body": "hi\n", "code": 201, "headers": [["X-A", "b"]]},
                    "ws-message": {"content-bin": base64.b64encode(b"\x80\x81").decode()},
                },
            }
        ]
    }
    trio.run(src.store.append_batch, parse_http_publish(json.dumps(body).encode()), clock.t)
    got = run(api, ItemsQuery("c"))["items"][0]
    assert got["publisher_id"] == "a1"
    resp = got["formats"]["http-response"]
    assert (resp["body"], resp["code"], resp["headers"]) == ("hi\n", 201, [["X-A", "b"]])
    assert base64.b64decode(got["formats"]["ws-message"]["content-bin"]) == b"\x80\x81"


def test_http_answer_is_json():
    _, _, api = setup(n=1)
    a = http(api, "/channels/c/items")
    assert (a.status, a.content_type) == (200, "application/json")
    assert json.loads(a.body)["items"][0]["id"] == "ep:1"


def test_store_unavailable_is_503():
    from broker.errors import StoreUnavailable

    class Down:
        async def replay(self, *a):
            raise StoreUnavailable("down")

    src, _, api = setup()
    src.store = Down()
    a = http(api, "/channels/c/items")
    assert (a.status, a.body) == (503, "Store unavailable.\n")
    assert api.statistics().store_failures == 1


# -- channel state and listing ---------------------------------------------------------------------


def edge_report(stats, edge, subs, now, full=True):
    stats.edge_report({"op": "stats", "edge": edge, "full": full, "subs": subs}, now)


def test_channel_info_counts_and_history():
    src, clock, api = setup(max_items=3, n=5, ids=True)
    src.live.add("c")
    edge_report(src.edge_stats, "e0", [["stream", "c", 2], ["ws", "c", 1]], clock.t - 0.5)
    edge_report(src.edge_stats, "e1", [["stream", "c", 3]], clock.t - 1.25)
    doc = run(api, ChannelQuery("c"))
    assert (doc["last_seq"], doc["last_id"], doc["last_publisher_id"]) == (5, "ep:5", "p5")
    assert doc["history"] == {"items": 3, "first_seq": 3}
    assert (doc["subscribers"], doc["by_mode"]) == (6, {"response": 0, "stream": 5, "ws": 1})
    assert (doc["live"], doc["edges"], doc["counts_age_s"]) == (True, 2, 1.25)


def test_unknown_channel_is_empty_not_an_error():
    _, _, api = setup()
    doc = run(api, ChannelQuery("nobody"))
    assert (doc["last_seq"], doc["last_id"], doc["history"]["items"]) == (0, None, 0)
    assert (doc["subscribers"], doc["live"], doc["counts_age_s"]) == (0, False, None)


def test_dead_edge_counts_drop_out():
    src, clock, api = setup()
    src.edge_stats = StatsEncoder(conn_send=False, edge_expire_s=6.0)
    edge_report(src.edge_stats, "e0", [["stream", "c", 2]], clock.t)
    edge_report(src.edge_stats, "e1", [["stream", "c", 3]], clock.t)
    clock.t += 5
    edge_report(src.edge_stats, "e0", [], clock.t, full=False)  # e0 still reporting, e1 silent
    clock.t += 1.5
    src.edge_stats.expire(clock.t)
    doc = run(api, ChannelQuery("c"))
    assert (doc["subscribers"], doc["edges"], doc["counts_age_s"]) == (2, 1, 1.5)


def test_channels_listing_prefix_paging_and_bounds():
    src, clock, api = setup()
    src.live.update({"chat.a", "chat.b", "chat.c", "news"})
    edge_report(src.edge_stats, "e0", [["ws", "chat.b", 4], ["stream", "other", 1]], clock.t)
    doc = run(api, ChannelsQuery("chat.", None, 2))
    assert [r["channel"] for r in doc["channels"]] == ["chat.a", "chat.b"]
    assert doc["channels"][1]["subscribers"] == 4 and doc["channels"][1]["by_mode"]["ws"] == 4
    assert (doc["more"], doc["next"]) == (True, "chat.b")
    doc = run(api, ChannelsQuery("chat.", "chat.b", 2))
    assert ([r["channel"] for r in doc["channels"]], doc["more"]) == (["chat.c"], False)
    doc = run(api, ChannelsQuery())  # every channel: live, or with reported subscribers
    assert [r["channel"] for r in doc["channels"]] == [
        "chat.a",
        "chat.b",
        "chat.c",
        "news",
        "other",
    ]


def test_channels_listing_is_bounded_with_many_channels():
    src, _, api = setup()
    src.live.update(f"ch{i:05d}" for i in range(20_000))
    doc = run(api, ChannelsQuery("", None, 1000))
    assert len(doc["channels"]) == 1000 and doc["more"] and doc["next"] == "ch00999"


# -- publish ids -----------------------------------------------------------------------------------


def test_published_answer_lists_ids_in_request_order():
    a, b, dup = item("c1"), item("c2", id="pub-1"), item("c1", id="seen")
    stored = [(b, _env("c2", 7, "pub-1")), (a, _env("c1", 3))]
    doc = channelapi.published_answer([a, b, dup], stored)
    assert doc == {
        "message": "Published",
        "items": [
            {"channel": "c1", "id": "ep:3", "epoch": "ep", "seq": 3, "stored": True},
            {"channel": "c2", "id": "pub-1", "epoch": "ep", "seq": 7, "stored": True},
            {"channel": "c1", "id": "seen", "stored": False},
        ],
    }


def _env(channel, seq, id=None):
    from broker.wire import Envelope

    return Envelope(channel=channel, seq=seq, epoch="ep", formats={}, id=id)


def test_publish_text_answer_unchanged():
    """The sans-IO publish answer is still Pushpin's (the JSON ids are added by the I/O once
    stored, tests/integration/test_channel_api.py)."""
    r = httpapi.handle_request(
        "POST",
        "/publish",
        [],
        b'{"items":[{"channel":"a","formats":{"http-stream":{"content":"x"}}}]}',
    ).response
    assert r.body == b"Published\n"


# -- the command socket ----------------------------------------------------------------------------


def _cmd(method, **args):
    payload = tnetstring.dumps({b"id": b"r1", b"method": method.encode(), b"args": args})
    return commands.handle_command(payload, {})


def test_command_queries():
    r = _cmd("channel-items", channel=b"c", after=b"ep:2", limit=5)
    assert (r.reply, r.query, r.rid) == (None, ItemsQuery("c", "ep:2", 5), b"r1")
    assert _cmd("channel-info", channel=b"c").query == ChannelQuery("c")
    assert _cmd("channels", prefix=b"a", limit=b"7").query == ChannelsQuery("a", None, 7)


@pytest.mark.parametrize(
    "method,args,reason",
    [
        ("channel-items", {}, b"Invalid channel: 'channel' is required."),
        ("channel-items", {"channel": b"c", "limit": 5000}, b"Invalid limit"),
        ("channel-items", {"channel": b"c", "after": b""}, b"Invalid after"),
        ("channel-info", {"channel": 5}, b"Invalid channel: must be a string."),
        ("channels", {"limit": True}, b"Invalid limit"),
    ],
)
def test_command_bad_requests(method, args, reason):
    r = _cmd(method, **args)
    reply = tnetstring.loads(r.reply)
    assert reply[b"success"] is False and reply[b"condition"] == b"bad-request"
    assert reason in reply[b"value"]


def test_command_reply_carries_the_answer():
    _, _, api = setup(n=2)
    value = run(api, ItemsQuery("c", "ep:1"))
    reply = tnetstring.loads(commands.query_reply(b"r1", value))
    assert reply[b"id"] == b"r1" and reply[b"success"] is True
    assert [i[b"id"] for i in reply[b"value"][b"items"]] == [b"ep:2"]
    down = tnetstring.loads(commands.query_reply(None, None))
    assert down[b"condition"] == b"store-unavailable"
