"""RedisStore through Redis Sentinel against real processes: a master, a replica and three
sentinels (tests/redis_sentinel.py).  The store finds the master, follows a failover (a killed
master, a coordinated SENTINEL FAILOVER, a dead sentinel), refuses what ``WAIT`` could not
confirm, and sequencing continues on the new master with no reused or lost seq."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
import trio

from bench.redisprocs import info, wait
from broker import store as stores
from broker.config import Config
from broker.errors import StoreUnavailable
from broker.items import Item
from broker.store.redis import RedisStore, RedisStoreError
from tests.helpers import MISSING
from tests.redis_sentinel import SentinelGroup, command
from tests.redis_server import redis_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not redis_available(), reason=MISSING + "redis-server is not installed"),
]


def item(n: int, channel: str = "s") -> Item:
    return Item(channel, {"http-stream": {"action": "send", "content": f"{n}\n".encode()}})


def open_store(g: SentinelGroup, wait_replicas: int = 0, **cfg) -> RedisStore:
    store = stores.open_store(Config(store=g.url(), redis_wait_replicas=wait_replicas, **cfg))
    assert isinstance(store, RedisStore)
    return store


async def append_until_stored(store: RedisStore, n: int, timeout_s: float = 20.0) -> tuple:
    """Append item ``n`` until acknowledged; (envelope, refusals)."""
    deadline = trio.current_time() + timeout_s
    refused = 0
    while True:
        try:
            (env,) = await store.append_batch([item(n)], time.time())
            return env, refused
        except StoreUnavailable:
            refused += 1
            assert trio.current_time() < deadline, "never acknowledged after the failover"
            await trio.sleep(0.05)


@pytest.fixture
def group():
    with SentinelGroup(replicas=1, sentinels=3) as g:
        yield g


def test_finds_the_master_and_checks_its_role(group):
    async def main():
        store = open_store(group)
        try:
            envs = await store.append_batch([item(0), item(1)], time.time())
            assert [e.seq for e in envs] == [1, 2]
            st = store.statistics()
            assert st.client.port == group.master_port
            assert st.sentinel is not None and st.sentinel.master == (
                "127.0.0.1",
                group.master_port,
            )
            assert st.sentinel.lookups == 1
        finally:
            await store.aclose()

    trio.run(main)


def test_wait_refuses_what_no_replica_confirmed(group):
    async def main():
        store = open_store(group, wait_replicas=1, redis_wait_timeout_ms=200)
        try:
            # a loaded machine can miss WAIT's 200 ms even with the replica in sync: retry
            env, refused_first = await append_until_stored(store, 0)
            assert env.seq == 1 + refused_first  # a refused write still took its seq
            replica = next(s for s in group.servers if s.port != group.master_port)
            replica.kill()  # no failover: the master is fine, nothing can confirm
            t0 = trio.current_time()
            with pytest.raises(RedisStoreError, match="only 0 of 1 replicas"):
                await store.append_batch([item(1)], time.time())
            assert trio.current_time() - t0 >= 0.19  # it did wait for WAIT's timeout
            # reads are refused too: an edge must not learn a seq a failover could reuse
            with pytest.raises(RedisStoreError, match="replicas"):
                await store.position("s")
            assert store.statistics().wait_refusals == refused_first + 2
            replica.start()  # comes back (empty), resyncs; then acknowledged again
            env, refused = await append_until_stored(store, 2)
            # the refused writes did reach the master: their seqs are used, never reused
            assert env.seq == 3 + refused_first + refused
        finally:
            await store.aclose()

    trio.run(main)


async def confirmed_position(store: RedisStore, timeout_s: float = 10.0):
    """The position of channel "s" once a replica confirms it (retried until then)."""
    deadline = trio.current_time() + timeout_s
    while True:
        try:
            return await store.position("s")
        except RedisStoreError:
            assert trio.current_time() < deadline, "never confirmed"
            await trio.sleep(0.05)


def test_a_read_confirms_what_other_connections_wrote(group):
    """WAIT only covers its own connection's writes: a read (position, replay) must not hand
    out a seq another connection wrote that no replica holds yet (a failover would reuse it)."""

    async def main():
        writer = open_store(group)  # wait_replicas=0: stored on the master alone
        reader = open_store(group, wait_replicas=1, redis_wait_timeout_ms=200)
        replica = next(s for s in group.servers if s.port != group.master_port)
        try:
            await writer.append_batch([item(0)], time.time())
            # the replica is in sync: confirmed (a loaded machine can miss WAIT's 200 ms once)
            assert (await confirmed_position(reader)).last_seq == 1
            assert replica.proc is not None
            os.kill(replica.proc.pid, signal.SIGSTOP)  # acknowledges nothing from now on
            try:
                await writer.append_batch([item(1)], time.time())
                with pytest.raises(RedisStoreError, match="only 0 of 1 replicas"):
                    await reader.position("s")
                with pytest.raises(RedisStoreError, match="only 0 of 1 replicas"):
                    await reader.replay("s", after_seq=0)
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            # confirmed again once the replica has caught up
            assert (await confirmed_position(reader)).last_seq == 2
        finally:
            await writer.aclose()
            await reader.aclose()

    trio.run(main)


def test_kill_9_of_the_master_loses_nothing_acknowledged(group):
    """wait_replicas=1: everything acknowledged before, during and after the failover is in the
    new master's history, seqs contiguous under one epoch; refusals while no master answers."""

    async def main():
        store = open_store(group, wait_replicas=1)
        acked: dict[int, int] = {}  # seq -> n
        try:
            for n in range(50):
                (env,) = await store.append_batch([item(n)], time.time())
                acked[env.seq] = n
            epoch = env.epoch
            old = group.master_port
            dead = group.kill_master()
            refused = 0
            t0 = trio.current_time()

            async def replace_the_dead_master():
                # once a replica is promoted, the killed one comes back (empty) as a replica of
                # the new master: without it no replica could confirm (WAIT) and every publish
                # stays refused
                await trio.to_thread.run_sync(group.wait_failover, old)
                await trio.to_thread.run_sync(group.rejoin, dead)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(replace_the_dead_master)
                for n in itertools.count(50):  # keep publishing through the failover
                    try:
                        (env,) = await store.append_batch([item(n)], time.time())
                    except StoreUnavailable:
                        refused += 1
                        assert trio.current_time() - t0 < 40, "never acknowledged again"
                        await trio.sleep(0.02)
                        continue
                    acked[env.seq] = n
                    if len(acked) >= 80:
                        break
            assert refused > 0  # there was a window without a master, and it refused
            st = store.statistics()
            named = {  # where every sentinel says the master is now
                int(command(s.port, "SENTINEL", "get-master-addr-by-name", group.master_name)[1])
                for s in group.sentinels
            }
            # the store writes to the master the sentinels name; on a loaded machine (down
            # after 500 ms) they may have failed over a second time, back to the rejoined node
            diag = (st, old, named)
            assert named == {st.client.port}, diag
            assert st.sentinel is not None and st.sentinel.master_changes >= 1, diag
            if st.sentinel.master_changes == 1:
                assert st.client.port != old, diag
            rep = await store.replay("s", epoch, 0)
            assert rep.epoch == epoch and rep.complete
            history = {e.seq: int(e.formats["http-stream"]["content"]) for e in rep.items}
            for seq, n in acked.items():
                assert history.get(seq) == n, (seq, n)
            # no hole after the failover: any seq not acknowledged was burnt on the old master
            # and is not in the new one, or it is there and delivered by repair (both fine);
            # acknowledged seqs strictly increase with n
            ordered = [acked[s] for s in sorted(acked)]
            assert ordered == sorted(ordered)
        finally:
            await store.aclose()

    trio.run(main)


def test_coordinated_failover_is_followed_and_sequencing_continues():
    """SENTINEL FAILOVER: the old master stays up (the sentinels demote it later); the store
    notices (+switch-master through serve(), or READONLY) and continues the channel's seqs.
    Two replicas: the one not promoted confirms (WAIT) on the new master at once."""

    async def main(group: SentinelGroup):
        store = open_store(group, wait_replicas=1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.serve)
                with trio.fail_after(10):  # the +switch-master subscription is up
                    while store.statistics().sentinel.watching is None:
                        await trio.sleep(0.01)
                envs = await store.append_batch([item(n) for n in range(10)], time.time())
                assert envs[-1].seq == 10
                old = group.master_port
                # both replicas hold them before the failover: WAIT 1 confirmed one, and the
                # sentinels may promote the other (then the channel's data is gone and a new
                # epoch is right, but not what this test is about)
                # (WAIT on a fresh connection would confirm nothing: it waits for that
                # connection's own writes, so compare replication offsets instead)
                target = int(info(old)["master_repl_offset"])
                replicas = [r.port for r in group.servers if r.port != old]
                await trio.to_thread.run_sync(
                    lambda: wait(
                        lambda: all(
                            int(info(p).get("slave_repl_offset", "0")) >= target for p in replicas
                        ),
                        10,
                        "replicas never caught up",
                    )
                )
                assert command(group.sentinels[0].port, "SENTINEL", "FAILOVER", "gcmaster") == b"OK"
                await trio.to_thread.run_sync(group.wait_failover, old)
                env, refused = await append_until_stored(store, 10)
                # the same epoch, no seq reused; seqs refused on the new master before its
                # replica (the old master) confirmed are stored there (burnt, not reused)
                assert env.epoch == envs[0].epoch and env.seq >= 11
                assert env.seq - 11 <= refused
                rep = await store.replay("s", env.epoch, 10)
                assert rep.complete and [e.seq for e in rep.items] == list(range(11, env.seq + 1))
                assert store.statistics().client.port == group.master_port != old
                nursery.cancel_scope.cancel()
            st = store.statistics().sentinel
            assert st is not None and st.master_changes >= 1
            assert st.switch_messages == 1  # the announcement was seen (and followed)
        finally:
            await store.aclose()

    with SentinelGroup(replicas=2, sentinels=3) as group:
        trio.run(main, group)


def test_a_dead_sentinel_is_skipped(group):
    async def main():
        group.sentinels[0].kill()
        store = open_store(group)
        try:
            (env,) = await store.append_batch([item(0)], time.time())
            assert env.seq == 1
            st = store.statistics().sentinel
            assert st is not None and st.sentinel_errors == 1 and st.lookups == 1
            await store.client.reconnect()  # the live sentinel is asked first now
            assert store.statistics().sentinel.sentinel_errors == 1
        finally:
            await store.aclose()

    trio.run(main)


def test_no_sentinel_answers_means_unavailable_not_a_crash(group):
    async def main():
        for s in group.sentinels:
            s.kill()
        store = open_store(group)
        try:
            with pytest.raises(StoreUnavailable, match="no sentinel knows master 'gcmaster'"):
                await store.append_batch([item(0)], time.time())
        finally:
            await store.aclose()

    trio.run(main)
