"""broker.store.redis against a real redis-server, including a differential test vs MemoryHistory."""

from __future__ import annotations

import itertools

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import StoreUnavailable
from broker.history import MemoryHistory
from broker.items import Item
from broker.store.redis import RedisStore, RedisStoreError, open_redis_store
from broker.store.redisclient import open_redis
from tests.helpers import MISSING
from tests.redis_server import RedisServer, redis_available

needs_redis = pytest.mark.skipif(
    not redis_available(), reason=MISSING + "redis-server is not installed"
)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), needs_redis]

_prefixes = itertools.count()
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def shared_redis():
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def redis():
    with RedisServer() as srv:
        yield srv


def prefix() -> str:
    """A key prefix of its own for each store under test on the shared server."""
    return f"t{next(_prefixes)}:"


def item(
    channel: str, n: int | None = None, id: str | None = None, prev_id: str | None = None
) -> Item:
    content = b"" if n is None else f"msg {n}\n".encode()
    return Item(
        channel,
        {"http-stream": {"action": "send", "content": content}},
        id=id,
        prev_id=prev_id,
        meta={"n": str(n)},
    )


def seqs(replay) -> list[int]:
    return [e.seq for e in replay.items]


def with_store(port: int, fn, **kwargs):
    kwargs.setdefault("key_prefix", prefix())

    async def main():
        async with await open_redis("127.0.0.1", port) as client:
            store = RedisStore(client, **kwargs)
            await fn(store, client)

    trio.run(main)


def test_append_position_replay(shared_redis):
    async def body(store, client):
        pos = await store.position("a")
        assert pos.last_seq == 0 and pos.last_id is None and len(pos.epoch) == 16
        envs = await store.append_batch(
            [item("a", 1, id="x1"), item("b", 1), item("a", 2, prev_id="x1"), item("a", 3)], NOW
        )
        assert [(e.channel, e.seq) for e in envs] == [("a", 1), ("b", 1), ("a", 2), ("a", 3)]
        assert envs[0].epoch == pos.epoch  # position created the epoch the appends use
        assert envs[1].epoch != pos.epoch
        assert envs[2].prev_id == "x1" and envs[0].ts == NOW
        assert await store.position("a") == (pos.epoch, 3, None)
        envs2 = await store.append_batch([item("a", 4, id="x4")], NOW)
        assert await store.position("a") == (pos.epoch, 4, "x4")
        # the stored record is byte for byte the fan-out envelope map
        raw = await client.execute("XRANGE", store.stream_key("a"), "-", "+")
        assert [r[0] for r in raw] == [b"1-0", b"2-0", b"3-0", b"4-0"]
        recs = [dict(zip(r[1][::2], r[1][1::2]))[b"d"] for r in raw]
        assert recs == [
            msgpack.packb(e.to_map(), use_bin_type=True) for e in envs[:1] + envs[2:] + envs2
        ]
        r = await store.replay("a", pos.epoch, 0, None, 100, NOW)
        assert r.complete and r.epoch == pos.epoch and r.last_seq == 4 and seqs(r) == [1, 2, 3, 4]
        assert r.items[0] == envs[0] and r.items[3] == envs2[0]
        assert r.items[1].formats == {"http-stream": {"action": "send", "content": b"msg 2\n"}}
        s = store.statistics()
        assert s.appended == 5 and s.batches == 2

    with_store(shared_redis.port, body)


def test_replay_cursors_and_limits(shared_redis):
    async def body(store, client):
        envs = await store.append_batch(
            [item("c", n, id=f"id{n}" if n % 2 else None) for n in range(1, 11)], NOW
        )
        ep = envs[0].epoch
        assert seqs(await store.replay("c", ep, 7, None, 100, NOW)) == [8, 9, 10]
        # paging with limit
        r = await store.replay("c", ep, 2, None, 3, NOW)
        assert r.complete and seqs(r) == [3, 4, 5] and r.last_seq == 10
        r = await store.replay("c", None, 5, None, 0, NOW)
        assert r.complete and r.items == []
        # up to date
        r = await store.replay("c", ep, 10, None, 100, NOW)
        assert r.complete and r.items == []
        # by publisher id, by "epoch:seq" cursor, by last id
        assert seqs(await store.replay("c", None, None, "id3", 100, NOW)) == [4, 5, 6, 7, 8, 9, 10]
        assert seqs(await store.replay("c", None, None, f"{ep}:8", 100, NOW)) == [9, 10]
        # cursors that cannot be placed: complete False, oldest retained items
        for args in [
            ("other-epoch", 3, None),
            (ep, 11, None),
            (ep, -1, None),
            (None, None, "unknown-id"),
            (None, None, "other:3"),
            (None, None, f"{ep}:11"),
        ]:
            r = await store.replay("c", *args, 4, NOW)
            assert not r.complete and seqs(r) == [1, 2, 3, 4], args
        # an unknown id falls back to after_seq when one is given
        r = await store.replay("c", ep, 6, "unknown-id", 100, NOW)
        assert r.complete and seqs(r) == [7, 8, 9, 10]
        # a channel nobody wrote
        r = await store.replay("nobody", None, 0, None, 10, NOW)
        assert r.complete and r.items == [] and r.last_seq == 0

    with_store(shared_redis.port, body)


def test_trim_by_count_exact(shared_redis):
    async def body(store, client):
        for n in range(1, 26):
            await store.append_batch([item("t", n)], NOW)
        assert await client.execute("XLEN", store.stream_key("t")) == 10
        ep = (await store.position("t")).epoch
        r = await store.replay("t", ep, 5, None, 100, NOW)
        assert not r.complete and seqs(r) == list(range(16, 26))
        r = await store.replay("t", ep, 14, None, 100, NOW)
        assert not r.complete
        r = await store.replay("t", ep, 15, None, 100, NOW)
        assert r.complete and seqs(r) == list(range(16, 26))

    with_store(shared_redis.port, body, max_items=10, approximate_trim=False)


def test_trim_by_count_approximate(shared_redis):
    async def body(store, client):
        for start in range(0, 1000, 100):
            await store.append_batch([item("t", n) for n in range(start, start + 100)], NOW)
        kept = await client.execute("XLEN", store.stream_key("t"))
        assert 100 <= kept <= 300
        r = await store.replay("t", None, 0, None, 1000, NOW)
        assert not r.complete and seqs(r) == list(range(1001 - kept, 1001))

    with_store(shared_redis.port, body, max_items=100)


def test_age_bound(shared_redis):
    async def body(store, client):
        await store.append_batch([item("g", n) for n in range(1, 4)], NOW)
        await store.append_batch([item("g", n) for n in range(4, 6)], NOW + 50)
        # read-side expiry: at NOW + 120 the first three are older than 100 s
        r = await store.replay("g", None, 0, None, 100, NOW + 120)
        assert not r.complete and seqs(r) == [4, 5]
        r = await store.replay("g", None, 3, None, 100, NOW + 120)
        assert r.complete and seqs(r) == [4, 5]
        assert await client.execute("XLEN", store.stream_key("g")) == 2
        # write-side expiry, and an idle stream key expires by itself (PEXPIRE)
        await store.append_batch([item("g", 6)], NOW + 200)
        assert await client.execute("XLEN", store.stream_key("g")) == 1
        assert 0 < await client.execute("PTTL", store.stream_key("g")) <= 101_000
        # everything expired: seq and epoch stay
        r = await store.replay("g", None, 5, None, 100, NOW + 1000)
        assert not r.complete and r.items == [] and r.last_seq == 6
        env = (await store.append_batch([item("g", 7)], NOW + 1000))[0]
        assert env.seq == 7 and env.epoch == r.epoch
        # without now, no age check
        assert seqs(await store.replay("g", None, 6, None, 100, None)) == [7]

    with_store(shared_redis.port, body, max_age_s=100.0)


def test_broker_restart_keeps_epochs_seqs_and_history(shared_redis):
    pfx = prefix()
    first = {}

    async def before(store, client):
        envs = await store.append_batch(
            [item(ch, n, id=f"{ch}{n}") for n in range(1, 6) for ch in "xy"], NOW
        )
        first.update({e.channel: e.epoch for e in envs})

    async def after(store, client):
        for ch in "xy":
            assert await store.position(ch) == (first[ch], 5, f"{ch}5")
        envs = await store.append_batch([item("x", 6), item("y", 6)], NOW + 1)
        assert [(e.epoch, e.seq) for e in envs] == [(first["x"], 6), (first["y"], 6)]
        r = await store.replay("x", first["x"], 0, None, 100, NOW + 1)
        assert r.complete and seqs(r) == [1, 2, 3, 4, 5, 6]
        assert seqs(await store.replay("y", None, None, "y4", 100, NOW + 1)) == [5, 6]

    with_store(shared_redis.port, before, key_prefix=pfx)
    with_store(shared_redis.port, after, key_prefix=pfx)  # a new client: the "restarted broker"


def test_open_redis_store_url(shared_redis):
    async def main():
        store = await open_redis_store(
            f"redis://127.0.0.1:{shared_redis.port}/5", key_prefix=prefix()
        )
        (env,) = await store.append_batch([item("u", 1)], NOW)
        assert env.seq == 1 and store.statistics().client.db == 5
        await store.aclose()
        assert not store.client.connected

    trio.run(main)


def test_batch_split_over_several_scripts_is_one_round_trip(shared_redis):
    async def body(store, client):
        before = client.statistics().requests
        batch = [item(ch, n) for n in range(1, 21) for ch in ("p", "q", "r")]
        envs = await store.append_batch(batch, NOW)
        assert client.statistics().requests == before + 1
        assert store.statistics().script_calls == 9  # ceil(60 / 7)
        for ch in "pqr":
            assert [e.seq for e in envs if e.channel == ch] == list(range(1, 21))
            assert [e.meta["n"] for e in envs if e.channel == ch] == [str(n) for n in range(1, 21)]

    with_store(shared_redis.port, body, max_script_items=7)


def test_script_cache_flush_is_survived(shared_redis):
    async def body(store, client):
        await store.append_batch([item("s", 1)], NOW)
        await client.execute("SCRIPT", "FLUSH")
        envs = await store.append_batch([item("s", 2), item("s", 3)], NOW)
        assert [e.seq for e in envs] == [2, 3]
        await client.execute("SCRIPT", "FLUSH")
        assert (await store.position("s")).last_seq == 3
        assert store.statistics().script_reloads >= 2

    with_store(shared_redis.port, body)


def test_failed_write_burns_seqs_never_reuses_them(shared_redis):
    async def body(store, client):
        envs = await store.append_batch([item("w", 1), item("w", 2)], NOW)
        ep = envs[0].epoch
        await client.execute("DEL", store.stream_key("w"))
        await client.execute("SET", store.stream_key("w"), "not a stream")
        with pytest.raises(RedisStoreError) as info:
            await store.append_batch([item("w", 3)], NOW)
        assert isinstance(info.value, StoreUnavailable) and "WRONGTYPE" in str(info.value)
        await client.execute("DEL", store.stream_key("w"))
        (env,) = await store.append_batch([item("w", 4)], NOW)
        assert (env.epoch, env.seq) == (ep, 4)  # 3 was reserved by the failed script
        r = await store.replay("w", ep, 2, None, 100, NOW)
        assert not r.complete and seqs(r) == [4]
        r = await store.replay("w", ep, 3, None, 100, NOW)
        assert r.complete and seqs(r) == [4]

    with_store(shared_redis.port, body)


def test_lost_meta_starts_a_new_epoch(shared_redis):
    async def body(store, client):
        envs = await store.append_batch([item("e", 1), item("e", 2)], NOW)
        old = envs[0].epoch
        await client.execute("DEL", store.meta_key("e"))  # e.g. evicted by maxmemory
        (env,) = await store.append_batch([item("e", 3)], NOW)
        assert env.epoch != old and env.seq == 1
        r = await store.replay("e", old, 2, None, 100, NOW)
        assert not r.complete and seqs(r) == [1] and r.epoch == env.epoch

    with_store(shared_redis.port, body)


def test_two_writers_on_one_channel_never_share_a_seq(shared_redis):
    pfx = prefix()

    async def main():
        got = []

        async def writer(w):
            async with await open_redis("127.0.0.1", shared_redis.port) as client:
                store = RedisStore(client, key_prefix=pfx)
                for _ in range(20):
                    envs = await store.append_batch([item("shared", n) for n in range(10)], NOW)
                    got.extend((e.epoch, e.seq) for e in envs)

        async with trio.open_nursery() as nursery:
            for w in range(3):
                nursery.start_soon(writer, w)
        assert len({ep for ep, _ in got}) == 1
        assert sorted(s for _, s in got) == list(range(1, 601))

    trio.run(main)


def test_redis_down_then_back(redis):
    async def main():
        async with await open_redis(
            "127.0.0.1", redis.port, backoff_initial_s=0.01, backoff_max_s=0.05
        ) as client:
            store = RedisStore(client, key_prefix="d:")
            await store.append_batch([item("k", 1)], NOW)
            redis.kill()
            with pytest.raises(StoreUnavailable):
                await store.append_batch([item("k", 2)], NOW)
            with pytest.raises(StoreUnavailable):
                await store.position("k")
            redis.start()  # nothing persisted: a new epoch
            await client.wait_connected(timeout_s=10)
            (env,) = await store.append_batch([item("k", 2)], NOW)
            assert env.seq == 1

    trio.run(main)


# -- differential: the Redis store answers exactly as MemoryHistory ---------------------------

CHANNELS = ("a", "b")
IDS = (None, "p", "q", "r")

append_op = st.tuples(
    st.just("append"),
    st.lists(st.tuples(st.sampled_from(CHANNELS), st.sampled_from(IDS)), min_size=1, max_size=6),
)
replay_op = st.tuples(
    st.just("replay"),
    st.sampled_from(CHANNELS),
    st.sampled_from(["none", "own", "other"]),  # epoch
    st.one_of(st.none(), st.integers(-1, 25)),  # after_seq
    st.one_of(st.none(), st.sampled_from(["p", "q", "r", "zz", "cursor", "badcursor"])),
    st.sampled_from([None, 0, 1, 3, 100]),  # limit
    st.integers(0, 25),  # cursor seq
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(st.one_of(append_op, replay_op), min_size=1, max_size=25))
def test_matches_memory_history(shared_redis, ops):
    pfx = prefix()

    async def main():
        mem = MemoryHistory(max_items=7, max_age_s=1e9)
        async with await open_redis("127.0.0.1", shared_redis.port) as client:
            red = RedisStore(client, max_items=7, approximate_trim=False, key_prefix=pfx)
            n = 0
            for op in ops:
                if op[0] == "append":
                    batch = []
                    for ch, id in op[1]:
                        n += 1
                        batch.append(item(ch, n, id=id))
                    got = await red.append_batch(batch, NOW)
                    want = [mem.append(i, NOW) for i in batch]
                    assert [(e.channel, e.seq, e.id) for e in got] == [
                        (e.channel, e.seq, e.id) for e in want
                    ]
                    continue
                _, ch, ep_kind, after_seq, after_id, limit, cseq = op
                mpos, rpos = mem.position(ch), await red.position(ch)
                assert (mpos.last_seq, mpos.last_id) == (rpos.last_seq, rpos.last_id)

                def args(pos, ep_kind=ep_kind, cseq=cseq, after_id=after_id, after_seq=after_seq):
                    ep = {"none": None, "own": pos.epoch, "other": "nope"}[ep_kind]
                    aid = {"cursor": f"{pos.epoch}:{cseq}", "badcursor": f"nope:{cseq}"}.get(
                        after_id, after_id
                    )
                    return ep, after_seq, aid

                want = mem.replay(ch, *args(mpos), limit, now=NOW)
                got = await red.replay(ch, *args(rpos), limit, NOW)
                assert got.epoch == rpos.epoch
                assert (got.last_seq, got.complete, [(e.seq, e.id, e.meta) for e in got.items]) == (
                    want.last_seq,
                    want.complete,
                    [(e.seq, e.id, e.meta) for e in want.items],
                ), op

    trio.run(main)


@pytest.mark.parametrize("method", ["append_batch", "position", "replay", "statistics", "aclose"])
def test_same_api_as_memory_store(method):
    import inspect

    from broker.store.memory import MemoryStore

    mine = inspect.signature(getattr(RedisStore, method))
    theirs = inspect.signature(getattr(MemoryStore, method))
    assert list(mine.parameters) == list(theirs.parameters)
    assert inspect.iscoroutinefunction(getattr(RedisStore, method)) == inspect.iscoroutinefunction(
        getattr(MemoryStore, method)
    )
    assert RedisStore.name == "redis"


def _sized(channel: str, n: int, size: int) -> Item:
    return Item(channel, {"http-stream": {"action": "send", "content": b"x" * size}}, id=str(n))


def test_trim_by_bytes_keeps_the_budget_and_the_newest(shared_redis):
    """Issue 11 item 8: a per-channel payload byte budget, as MemoryHistory keeps it, exact
    across count trims (no counter to drift: the stream's own c/n fields say what it holds)."""

    async def body(store, client):
        for n in range(1, 11):
            await store.append_batch([_sized("b", n, 3000)], NOW)
        ep = (await store.position("b")).epoch
        r = await store.replay("b", ep, 0, None, 100, NOW)
        assert seqs(r) == [8, 9, 10]  # 9,000 bytes: a fourth would pass 10,000
        await store.append_batch([_sized("b", 11, 50_000)], NOW)  # alone over: kept alone
        assert seqs(await store.replay("b", ep, 0, None, 100, NOW)) == [11]
        # one batch, two channels, then small items fill up again
        await store.append_batch(
            [
                _sized("b", 12, 4000),
                _sized("o", 1, 6000),
                _sized("b", 13, 4000),
                _sized("b", 14, 4000),
            ],
            NOW,
        )
        assert seqs(await store.replay("b", ep, 0, None, 100, NOW)) == [13, 14]
        eo = (await store.position("o")).epoch
        assert seqs(await store.replay("o", eo, 0, None, 100, NOW)) == [1]

    with_store(shared_redis.port, body, max_bytes=10_000)


def test_trim_by_bytes_after_count_trims(shared_redis):
    async def body(store, client):
        for n in range(1, 40):
            await store.append_batch([_sized("c", n, 1000)], NOW)
        ep = (await store.position("c")).epoch
        assert seqs(await store.replay("c", ep, 0, None, 100, NOW)) == list(range(35, 40))
        for n in range(40, 43):
            await store.append_batch([_sized("c", n, 3000)], NOW)
        assert seqs(await store.replay("c", ep, 0, None, 100, NOW)) == [41, 42]

    with_store(shared_redis.port, body, max_items=5, approximate_trim=False, max_bytes=7000)


def test_trim_by_bytes_matches_memory_history(shared_redis):
    """The same items give the same kept seqs in both stores."""
    sizes = [3000, 3000, 5000, 100, 9000, 20_000, 1, 1, 4000, 4000, 2000]
    h = MemoryHistory(max_items=1000, max_bytes=10_000)
    expected = []
    for n, size in enumerate(sizes, 1):
        h.append(_sized("m", n, size), NOW)
        expected.append([e.seq for e in h.replay("m", after_seq=0).items])
    assert expected[4] == [4, 5] and expected[7] == [7, 8] and expected[-1] == [9, 10, 11]

    async def body(store, client):
        got = []
        for n, size in enumerate(sizes, 1):
            await store.append_batch([_sized("m", n, size)], NOW)
            ep = (await store.position("m")).epoch
            got.append(seqs(await store.replay("m", ep, 0, None, 100, NOW)))
        assert got == expected

    with_store(shared_redis.port, body, max_bytes=10_000)


def test_sequencing_in_redis_on_standalone_keeps_the_key_layout(shared_redis):
    """Two stores ("brokers") with sequencing in Redis on one standalone Redis: ids dropped
    across them, prev-id held until the predecessor is stored through the other; the keys keep
    the layout of earlier versions (plus the ids key)."""
    from broker.sequencer import Sequencer

    pfx = prefix()

    async def main():
        async with (
            await open_redis("127.0.0.1", shared_redis.port) as c1,
            await open_redis("127.0.0.1", shared_redis.port) as c2,
        ):
            kw = dict(key_prefix=pfx, id_cache_ttl_s=60.0, check_prev_id=True)
            a, b = RedisStore(c1, **kw), RedisStore(c2, **kw)
            sa, sb = Sequencer(), Sequencer()
            a.attach_sequencer(sa)
            b.attach_sequencer(sb)
            assert [e.seq for e in await a.append_batch([item("s", 0, id="i0")], NOW)] == [1]
            assert await b.append_batch([item("s", 0, id="i0")], NOW) == []  # duplicate
            assert await b.append_batch([item("s", 2, id="i2", prev_id="i1")], NOW) == []
            assert sb.deferred_count() == 1
            envs = await a.append_batch([item("s", 1, id="i1", prev_id="i0")], NOW)
            assert [e.seq for e in envs] == [2]
            envs = await b.append_batch(sb.poll(trio.current_time()), NOW)
            assert [(e.id, e.seq) for e in envs] == [("i2", 3)]
            assert await c1.execute("HGET", pfx + "m:s", "last_id") == b"i2"
            assert await c1.execute("XLEN", pfx + "h:s") == 3
            assert await c1.execute("ZCARD", pfx + "i:s") == 3
            # a store without sequencing in Redis (the default) reads and continues the same keys
            plain = RedisStore(c1, key_prefix=pfx)
            assert (await plain.position("s")).last_seq == 3
            assert [e.seq for e in await plain.append_batch([item("s", 3)], NOW)] == [4]

    trio.run(main)


async def lose_writes(client, store: RedisStore, channel: str, keep: int) -> None:
    """Emulate a Redis failover that lost the channel's writes after seq ``keep`` (the promoted
    replica missed them): its meta hash and stream as the replica had them.  A real Redis, the
    lost state written with HSET/XTRIM (tests/integration/test_seq_regression.py promotes a
    real replica)."""
    await client.execute("HSET", store.meta_key(channel), "seq", keep, "last_id", f"i{keep}")
    await client.execute("XTRIM", store.stream_key(channel), "MAXLEN", "=", keep)


@pytest.mark.parametrize("via", ["append", "position", "replay"])
def test_seq_went_backwards_is_a_new_epoch_for_every_broker(shared_redis, via):
    """The store answering a lower seq than this broker stored in the same epoch moves the
    channel to a new epoch in Redis, atomically, before sequencing: another broker that never
    saw the lost seqs then agrees (same new epoch, next seq), no seq is handed out twice."""
    pfx = prefix()

    async def main():
        async with (
            await open_redis("127.0.0.1", shared_redis.port) as ca,
            await open_redis("127.0.0.1", shared_redis.port) as cb,
        ):
            a = RedisStore(ca, key_prefix=pfx)
            b = RedisStore(cb, key_prefix=pfx)
            envs = await a.append_batch([item("r", n, id=f"i{n}") for n in range(1, 6)], NOW)
            old = envs[0].epoch
            await lose_writes(ca, a, "r", 3)
            if via == "append":
                (env,) = await a.append_batch([item("r", 6, id="i6")], NOW)
                new = env.epoch
                assert env.seq == 1
            elif via == "position":
                pos = await a.position("r")
                new = pos.epoch
                assert pos.last_seq == 0 and pos.last_id is None
            else:
                r = await a.replay("r", old, 5, None, 100, NOW)
                new = r.epoch
                assert r.last_seq == 0 and r.items == []
            assert new != old
            assert a.statistics().seq_regressions == 1
            (env_b,) = await b.append_batch([item("r", 7, id="i7")], NOW)
            assert env_b.epoch == new and env_b.seq == (2 if via == "append" else 1)
            assert b.statistics().seq_regressions == 0
            # the old epoch's cursor is unknown now: resumes fail, never read new seqs as old
            r = await b.replay("r", old, 3, None, 100, NOW)
            assert not r.complete and r.epoch == new
            # and nothing moves again: a's floor follows the new epoch
            (env_a,) = await a.append_batch([item("r", 8, id="i8")], NOW)
            assert env_a.epoch == new and a.statistics().seq_regressions == 1

    trio.run(main)


def test_no_new_epoch_when_seq_did_not_go_back(shared_redis):
    """Another broker moving the seq on is never taken for a regression."""
    pfx = prefix()

    async def main():
        async with (
            await open_redis("127.0.0.1", shared_redis.port) as ca,
            await open_redis("127.0.0.1", shared_redis.port) as cb,
        ):
            a = RedisStore(ca, key_prefix=pfx)
            b = RedisStore(cb, key_prefix=pfx)
            (e1,) = await a.append_batch([item("s", 1)], NOW)
            for n in range(2, 6):
                await b.append_batch([item("s", n)], NOW)
            (e6,) = await a.append_batch([item("s", 6)], NOW)
            assert e6.epoch == e1.epoch and e6.seq == 6
            assert (await b.position("s")).last_seq == 6
            assert a.statistics().seq_regressions == b.statistics().seq_regressions == 0

    trio.run(main)


def test_seen_seqs_are_bounded(shared_redis, monkeypatch):
    from broker.store import redis as redis_mod

    monkeypatch.setattr(redis_mod, "SEEN_CHANNELS_MAX", 10)

    async def body(store, client):
        await store.append_batch([item(f"b{n}", n) for n in range(25)], NOW)
        assert list(store._seen) == [f"b{n}" for n in range(15, 25)]  # first in, first out
        await store.position("b3")  # dropped already: remembered again, as the newest
        assert len(store._seen) == 10 and list(store._seen)[-1] == "b3"

    with_store(shared_redis.port, body)
