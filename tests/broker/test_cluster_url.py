"""broker.store.cluster (sans-IO): URL form, hash slots, key tags, redirections, CLUSTER SLOTS;
and the sequencer's retry queue that shared sequencing uses."""

from __future__ import annotations

import pytest

from broker.errors import ConfigError
from broker.items import Item
from broker.sequencer import Sequencer
from broker.store.cluster import (
    ClusterReplyError,
    Redirect,
    channel_tag,
    crc16,
    is_cluster_url,
    key_slot,
    parse_cluster_url,
    parse_redirect,
    parse_slots,
)


def test_crc16_and_slots_match_the_cluster_spec():
    assert crc16(b"123456789") == 0x31C3  # the specification's test vector
    assert key_slot(b"foo") == 12182  # CLUSTER KEYSLOT foo
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: the whole key
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")


def test_channel_tags_keep_a_channel_in_one_slot_and_never_collide():
    assert channel_tag("news") == b"{news}"
    for ch in ("a{b}c", "{x}", "}{", ""):
        tag = channel_tag(ch)
        assert tag.startswith(b"{#") and tag.endswith(b":" + ch.encode())
        assert key_slot(b"gc:m:" + tag) == key_slot(b"gc:h:" + tag) == key_slot(tag)
    empty_digest = "#da39a3ee5e6b4b0d3255bfef95601890afd80709"  # sha1 of ""
    names = ["a", "a}", "{a", "#a", "a{b}c", "", "}{", "x:y", empty_digest]
    assert len({channel_tag(n) for n in names}) == len(names)


def test_url_form():
    url = parse_cluster_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert url.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert url.password == "s3cret"
    assert url.describe() == "redis+cluster://10.0.0.1:7000,10.0.0.2:6379,[::1]:7002"
    assert parse_cluster_url("redis+cluster://h:1/").seeds == (("h", 1),)
    assert is_cluster_url("redis+cluster://h") and not is_cluster_url("redis://h")


def test_bad_urls_list_every_problem():
    with pytest.raises(ConfigError) as exc:
        parse_cluster_url("redis+cluster://h:99999,h2:1,h2:1/3?x=1")
    text = " ".join(exc.value.problems)
    assert "bad port" in text and "no path" in text and "no options" in text and "twice" in text
    with pytest.raises(ConfigError):
        parse_cluster_url("redis+cluster:///")


def test_redirections():
    assert parse_redirect("MOVED 3999 127.0.0.1:6381") == Redirect(False, 3999, ("127.0.0.1", 6381))
    assert parse_redirect("ASK 1 [::1]:7000") == Redirect(True, 1, ("::1", 7000))
    assert parse_redirect("ERR something") is None
    assert parse_redirect("MOVED x y:z") is None


def test_cluster_slots_reply():
    reply = [
        [0, 5460, [b"", 7000, b"id"], [b"127.0.0.1", 7003, b"id2"]],
        [5461, 16383, [b"h", 7001]],
    ]
    assert parse_slots(reply, "seed") == [(0, 5460, ("seed", 7000)), (5461, 16383, ("h", 7001))]
    with pytest.raises(ClusterReplyError):
        parse_slots([[0, b"x", []]], "seed")


def _item(ch: str, id: str, prev: str | None = None) -> Item:
    return Item(ch, {}, id=id, prev_id=prev)


def test_sequencer_retry_queue():
    seq = Sequencer()
    recovered = []
    seq.on_recover.append(lambda: recovered.append(1))
    c2, c3, other = _item("c", "c2", "c1"), _item("c", "c3", "c2"), _item("d", "d9", "d8")
    seq.defer([c2, c3, other])
    assert seq.deferred_count() == 3 and seq.next_deadline() == float("-inf")
    assert seq.take_deferred([("c", "c1")]) == [c2, c3]  # down the chain
    assert seq.poll(1.0) == [other] and seq.deferred_count() == 0
    assert seq.clock == 1.0 and seq.next_deadline() is None
    seq.recover()
    assert recovered == [1]
    # as for waiting items: one per prev-id, at most pending_max per channel
    small = Sequencer(pending_max=2)
    x1, x1b, x2, x3 = (
        _item("x", "a", "p1"),
        _item("x", "b", "p1"),
        _item("x", "c", "p2"),
        _item("x", "d", "p3"),
    )
    assert small.defer([x1, x1b, x2, x3]) == [x1b, x3]
    st = small.statistics()
    assert (st.dropped_conflict, st.dropped_overflow, small.deferred_count()) == (1, 1, 2)


def test_config_and_open_store_for_a_cluster():
    from broker import store as stores
    from broker.config import Config, validate
    from broker.store.clusterclient import RedisClusterClient

    assert validate(Config(store="redis+cluster://a:7000,b:7001")) == []
    problems = validate(Config(store="redis+cluster://a:7000/2"))
    assert any("no path" in p for p in problems)
    cfg = Config(
        store="redis+cluster://:pw@a:7000,b:7001",
        redis_wait_replicas=1,
        redis_wait_timeout_ms=250,
        id_cache_ttl_s=30.0,
        message_wait_s=2.0,
    )
    store = stores.open_store(cfg)  # no I/O yet
    assert isinstance(store, stores.RedisStore)
    assert isinstance(store.client, RedisClusterClient)
    assert store.client.url.seeds == (("a", 7000), ("b", 7001))
    assert store.client.timeout_s > 0.25  # a round trip includes WAIT's timeout
    assert (store.wait_replicas, store.id_cache_ttl_s, store.message_wait_s) == (1, 30.0, 2.0)
    assert store.check_prev_id
    assert store.meta_key("news") == b"gc:m:{news}"
    assert stores.describe(cfg) == "redis+cluster://a:7000,b:7001 wait_replicas=1"
    assert "pw" not in stores.describe(cfg)
    # standalone keeps the earlier key layout; sequencing in Redis is on for every Redis form
    plain = stores.open_store(Config(store="redis://h/0"))
    assert isinstance(plain, stores.RedisStore)
    assert plain.meta_key("news") == b"gc:m:news" and plain.check_prev_id
