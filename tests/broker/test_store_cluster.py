"""broker.store.redis on a real Redis Cluster (3 masters, 3 replicas; tests/redis_cluster.py):
slots and shards, MOVED/ASK, a master failover, and two stores ("brokers") on one channel."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import trio

from broker.errors import StoreUnavailable
from broker.items import Item
from broker.sequencer import Sequencer
from broker.store.cluster import channel_tag, key_slot, parse_cluster_url
from broker.store.clusterclient import RedisClusterClient
from broker.store.redis import RedisStore
from tests.helpers import MISSING
from tests.redis_cluster import RedisCluster, cli_available
from tests.redis_server import redis_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not (redis_available() and cli_available()),
        reason=MISSING + "redis-server / redis-cli is not installed",
    ),
]

NOW = 1_700_000_000.0
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def cluster():
    with RedisCluster() as c:
        yield c


def prefix() -> str:
    return f"c{next(_prefixes)}:"


def item(channel: str, n: int, id: str | None = None, prev_id: str | None = None) -> Item:
    return Item(
        channel,
        {"http-stream": {"action": "send", "content": f"msg {n}\n".encode()}},
        id=id,
        prev_id=prev_id,
        meta={"n": str(n)},
    )


def client_for(cluster: RedisCluster, **kw) -> RedisClusterClient:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("backoff_max_s", 0.2)
    return RedisClusterClient(parse_cluster_url(cluster.url()), **kw)


def channels_on_each_master(cluster: RedisCluster, per_master: int = 2) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {m: [] for m in cluster.master_ports()}
    ranges = cluster.slots()
    names = (f"ch{i}" for i in itertools.count())
    specials = iter(["a{b}c", "{x}", "}{", ""])
    while any(len(v) < per_master for v in out.values()):
        name = next(specials, None)
        if name is None:
            name = next(names)
        slot = key_slot(channel_tag(name))
        master = next(m for first, last, m, _ in ranges if first <= slot <= last)
        if len(out[master]) < per_master:
            out[master].append(name)
    return out


def same_slot_channel(channel: str, exclude: set[str]) -> str:
    slot = key_slot(channel_tag(channel))
    for i in itertools.count():
        name = f"peer{i}"
        if name not in exclude and key_slot(channel_tag(name)) == slot:
            return name
    raise AssertionError


def test_append_replay_position_on_every_shard(cluster):
    by_master = channels_on_each_master(cluster)
    channels = [c for cs in by_master.values() for c in cs]
    pfx = prefix()

    async def main():
        async with client_for(cluster) as client:
            store = RedisStore(client, key_prefix=pfx)
            batch = [item(ch, n) for n in range(5) for ch in channels]
            envs = await store.append_batch(batch, NOW)
            # envelopes in the order of the batch, seqs 1..5 per channel
            assert [e.channel for e in envs] == [i.channel for i in batch]
            assert [e.seq for e in envs] == [n + 1 for n in range(5) for _ in channels]
            for ch in channels:
                pos = await store.position(ch)
                assert pos.last_seq == 5
                rep = await store.replay(ch, after_seq=2, epoch=pos.epoch)
                assert rep.complete and [e.seq for e in rep.items] == [3, 4, 5]
                assert [e.meta["n"] for e in rep.items] == ["2", "3", "4"]
            st = store.statistics()
            assert st.client.masters == 3  # type: ignore[union-attr]
            assert st.client.moved == 0  # type: ignore[union-attr]

    trio.run(main)
    # each channel's keys are on the master its slot names (one slot per channel)
    for master, chans in by_master.items():
        for ch in chans:
            tag = channel_tag(ch)
            for kind in (b"m:", b"h:"):
                assert cluster.run(master, "EXISTS", pfx.encode() + kind + tag) == 1


def test_wait_replicas_on_every_master_written_to(cluster):
    channels = [c for cs in channels_on_each_master(cluster, 1).values() for c in cs]
    pfx = prefix()

    async def main():
        async with client_for(cluster) as client:
            # one replica per master: WAIT 1 is met on all three
            store = RedisStore(client, key_prefix=pfx, wait_replicas=1, wait_timeout_ms=2000)
            envs = await store.append_batch([item(ch, 0) for ch in channels], NOW)
            assert [e.seq for e in envs] == [1, 1, 1]
            # WAIT 2 cannot be met: refused (503 upstream), counted
            strict = RedisStore(client, key_prefix=pfx, wait_replicas=2, wait_timeout_ms=50)
            with pytest.raises(StoreUnavailable, match="only 1 of 2 replicas"):
                await strict.append_batch([item(ch, 1) for ch in channels], NOW)
            assert strict.statistics().wait_refusals == 1

    trio.run(main)


def test_ask_tryagain_and_moved_during_a_slot_migration(cluster):
    by_master = channels_on_each_master(cluster, per_master=1)
    src, dst = sorted(by_master)[:2]
    ch = by_master[src][0]
    peer = same_slot_channel(ch, {ch})
    slot = key_slot(channel_tag(ch))
    pfx = prefix()
    src_id, dst_id = cluster.node_id(src), cluster.node_id(dst)

    def finish_migration():
        for port in {*cluster.master_ports(), src, dst}:
            cluster.run(port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    async def main():
        async with client_for(cluster) as client:
            store = RedisStore(client, key_prefix=pfx, id_cache_ttl_s=60.0)
            envs = await store.append_batch([item(ch, n, id=f"c{n}") for n in range(3)], NOW)
            assert [e.seq for e in envs] == [1, 2, 3]
            # the slot starts moving src -> dst, and ch's keys (meta, stream, ids) move first
            assert cluster.run(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id) == b"OK"
            assert cluster.run(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id) == b"OK"
            keys = [pfx.encode() + k + channel_tag(ch) for k in (b"m:", b"h:", b"i:")]
            reply = cluster.run(src, "MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
            assert reply == b"OK", reply
            # src has none of ch's keys: ASK, and dst (ASKING) has them all
            envs = await store.append_batch([item(ch, 3, id="c3")], NOW)
            assert [e.seq for e in envs] == [4]
            assert client.statistics().asked >= 1
            # a new channel's keys are on neither side: TRYAGAIN until the slot has moved
            result: list = []

            async def append_peer():
                result.extend(await store.append_batch([item(peer, 0)], NOW))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(append_peer)
                with trio.fail_after(5):
                    while client.statistics().tryagain < 1:
                        await trio.sleep(0.002)
                await trio.to_thread.run_sync(finish_migration)
            assert [e.seq for e in result] == [1]
            # the slot map still names src: MOVED to dst
            envs = await store.append_batch([item(ch, 4, id="c4"), item(peer, 1)], NOW)
            assert [(e.channel, e.seq) for e in envs] == [(ch, 5), (peer, 2)]
            assert client.statistics().moved >= 1
            assert client.slot_node(slot) == ("127.0.0.1", dst)
            rep = await store.replay(ch, after_seq=0)
            assert [e.seq for e in rep.items] == [1, 2, 3, 4, 5]
            # duplicate ids were migrated with the channel
            assert await store.append_batch([item(ch, 9, id="c1")], NOW) == []

    trio.run(main)


def test_master_failover_refuses_then_continues_without_loss(cluster):
    by_master = channels_on_each_master(cluster, per_master=1)
    victim = sorted(by_master)[-1]
    ch = by_master[victim][0]
    pfx = prefix()
    acked: list[tuple[int, str]] = []
    refused = 0

    async def main():
        nonlocal refused
        async with client_for(cluster) as client:
            store = RedisStore(client, key_prefix=pfx, wait_replicas=1, wait_timeout_ms=500)
            n = itertools.count()
            stop = trio.Event()

            async def publish():
                nonlocal refused
                while not stop.is_set():
                    k = next(n)
                    try:
                        envs = await store.append_batch([item(ch, k)], NOW)
                    except StoreUnavailable:
                        refused += 1
                        await trio.sleep(0.02)
                        continue
                    acked.extend((e.seq, e.meta["n"]) for e in envs)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                with trio.fail_after(10):
                    while len(acked) < 20:
                        await trio.sleep(0.01)
                before = len(acked)
                cluster.kill(victim)
                t0 = time.monotonic()
                await trio.to_thread.run_sync(cluster.wait_failover, victim)
                failover_s = time.monotonic() - t0
                # the killed master comes back as a replica of the new one (WAIT 1 needs one)
                await trio.to_thread.run_sync(cluster.restart, victim)
                with trio.fail_after(20):
                    while len(acked) < before + 20:
                        await trio.sleep(0.01)
                stop.set()
            assert refused > 0, "publishes during the failover must be refused"
            assert failover_s < 15
            rep = await store.replay(ch, after_seq=0)
            stored = [(e.seq, e.meta["n"]) for e in rep.items]
            seqs = [s for s, _ in stored]
            assert seqs == list(range(1, len(seqs) + 1)), "seqs contiguous"
            assert set(acked) <= set(stored), "no acknowledged item lost"
            ack_seqs = [s for s, _ in acked]
            assert ack_seqs == sorted(ack_seqs) and len(set(ack_seqs)) == len(ack_seqs)

    trio.run(main)


class Broker:
    """What the broker's pipeline does with the store: sequencer, then append_batch."""

    def __init__(self, store: RedisStore, message_wait_s: float = 5.0) -> None:
        self.store = store
        self.seq = Sequencer(id_cache_ttl_s=60.0, message_wait_s=message_wait_s)
        store.attach_sequencer(self.seq)
        self.stored: list = []

    async def publish(self, items: list[Item]) -> list:
        released = self.seq.add_many(items, trio.current_time())
        envs = await self.store.append_batch(released, NOW) if released else []
        self.stored += envs
        return envs

    async def poll(self, ahead_s: float = 0.0) -> list:
        released = self.seq.poll(trio.current_time() + ahead_s)
        envs = await self.store.append_batch(released, NOW) if released else []
        self.stored += envs
        return envs


def two_brokers(cluster: RedisCluster, fn) -> None:
    pfx = prefix()

    async def main():
        async with client_for(cluster) as c1, client_for(cluster) as c2:
            kw = dict(key_prefix=pfx, id_cache_ttl_s=60.0, check_prev_id=True)
            a = Broker(RedisStore(c1, **kw))
            b = Broker(RedisStore(c2, **kw))
            await fn(a, b)

    trio.run(main)


def test_two_brokers_never_reuse_a_seq_and_drop_duplicates_across(cluster):
    async def body(a: Broker, b: Broker):
        async def writer(br: Broker, tag: str):
            for k in range(15):
                await br.publish([item("both", k, id=f"{tag}{k}"), item("both2", k)])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, a, "a")
            nursery.start_soon(writer, b, "b")
        got = sorted(e.seq for e in a.stored + b.stored if e.channel == "both")
        assert got == list(range(1, 31))
        # b gets a's ids again (a publisher retrying through another broker): all dropped
        again = await b.publish([item("both", k, id=f"a{k}") for k in range(15)])
        assert again == []
        assert b.store.statistics().dropped_duplicate == 15
        # a new id still goes through
        assert [e.seq for e in await b.publish([item("both", 99, id="new")])] == [31]

    two_brokers(cluster, body)


def test_prev_id_waits_for_its_predecessor_through_another_broker(cluster):
    async def body(a: Broker, b: Broker):
        await a.publish([item("chain", 0, id="c0")])
        # c2 reaches b before c1 reaches a: held (Redis's last id is c0)
        assert await b.publish([item("chain", 2, id="c2", prev_id="c1")]) == []
        assert b.seq.deferred_count() == 1
        assert await b.poll() == []  # retried: still waiting
        [e1] = await a.publish([item("chain", 1, id="c1", prev_id="c0")])
        assert e1.seq == 2
        [e2] = await b.poll()  # retried: its predecessor is in Redis now
        assert (e2.id, e2.seq) == ("c2", 3)
        # the same on one broker: released right after its predecessor, no poll needed
        assert await a.publish([item("chain", 4, id="c4", prev_id="c3")]) == []
        envs = await a.publish([item("chain", 3, id="c3", prev_id="c2")])
        assert [(e.id, e.seq) for e in envs] == [("c3", 4), ("c4", 5)]
        # a predecessor that never comes: stored unchecked once message_wait_s is over
        assert await b.publish([item("chain", 6, id="c6", prev_id="lost")]) == []
        assert await b.poll() == []
        [e6] = await b.poll(ahead_s=10.0)
        assert (e6.id, e6.seq) == ("c6", 6)
        assert b.store.statistics().timed_out == 1
        # a duplicate of a held item is dropped whichever broker gets it
        assert await b.publish([item("chain", 8, id="c8", prev_id="c7")]) == []
        assert await a.publish([item("chain", 8, id="c8", prev_id="c7")]) == []
        assert a.store.statistics().dropped_duplicate == 1

    two_brokers(cluster, body)


def test_two_broker_processes_on_the_cluster(cluster, tmp_path):
    """Real brokers (HTTP publish API) on one Redis Cluster: a duplicate id through the other
    broker is dropped; an item whose prev-id went through the other broker waits for it."""
    import httpx

    from tests.integration.cluster import Cluster

    ch = f"procs{next(_prefixes)}"

    def pub(broker: Cluster, n: int, id: str, prev: str | None = None) -> None:
        it = {"channel": ch, "id": id, "formats": {"http-stream": {"content": f"{n}\n"}}}
        if prev is not None:
            it["prev-id"] = prev
        r = httpx.post(broker.publish_url + "/publish", json={"items": [it]}, timeout=10)
        assert r.status_code == 200, r.text

    async def history() -> list[tuple[int, str | None]]:
        async with client_for(cluster) as client:
            rep = await RedisStore(client).replay(ch, after_seq=0)
            return [(e.seq, e.id) for e in rep.items]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    url = cluster.url()
    a = Cluster(tmp_path / "a", [], edges=0, store=url)
    b = Cluster(tmp_path / "b", [], edges=0, store=url)
    errors: list[BaseException] = []

    def start(c: Cluster) -> None:
        try:
            c.start()
        except BaseException as exc:
            errors.append(exc)

    starting = [threading.Thread(target=start, args=(c,)) for c in (a, b)]  # both at once
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    try:
        assert not errors, errors
        pub(a, 0, "p0")
        pub(b, 0, "p0")  # a retry through the other broker: dropped
        pub(b, 2, "p2", prev="p1")  # ahead of its predecessor: held by b
        pub(a, 1, "p1", prev="p0")
        deadline = time.monotonic() + 10
        while (got := trio.run(history)) != [(1, "p0"), (2, "p1"), (3, "p2")]:
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
    finally:
        stopping = [threading.Thread(target=c.stop) for c in (a, b)]
        for t in stopping:
            t.start()
        for t in stopping:
            t.join()
