"""broker.store.redisclient against a real redis-server (and a silent fake one for timeouts)."""

from __future__ import annotations

from functools import partial

import hiredis
import pytest
import trio
import trio.testing

from broker.errors import ConfigError, LocalProtocolError, StoreUnavailable
from broker.store.redisclient import (
    RedisClient,
    RedisReplyError,
    RedisUnavailable,
    open_redis,
    open_redis_url,
    parse_redis_url,
)
from tests.helpers import MISSING, free_ports
from tests.redis_server import RedisServer, redis_available

needs_redis = pytest.mark.skipif(
    not redis_available(), reason=MISSING + "redis-server is not installed"
)


def integration(fn):
    """A test that starts redis-server: marked, time-bounded, skipped without the binary."""
    return pytest.mark.integration(pytest.mark.timeout(60)(needs_redis(fn)))


@pytest.fixture
def redis():
    with RedisServer() as srv:
        yield srv


def run(fn, *args):
    return trio.run(fn, *args)


# -- unit: URLs ------------------------------------------------------------------------------


def test_parse_redis_url():
    assert parse_redis_url("redis://127.0.0.1:6380/2") == ("127.0.0.1", 6380, 2, None)
    assert parse_redis_url("redis://localhost") == ("localhost", 6379, 0, None)
    assert parse_redis_url("redis://:s%40cret@h:1/") == ("h", 1, 0, "s@cret")
    with pytest.raises(ConfigError) as info:
        parse_redis_url("http://h/x")
    assert len(info.value.problems) == 2


# -- integration -----------------------------------------------------------------------------


@integration
def test_execute_basics(redis):
    async def main():
        async with await open_redis("127.0.0.1", redis.port) as r:
            assert await r.execute("PING") == b"PONG"
            assert await r.execute("SET", "k", "v") == b"OK"
            assert await r.execute("GET", "k") == b"v"
            assert await r.execute("GET", "missing") is None
            assert await r.execute("INCRBY", "n", 5) == 5
            assert await r.execute("RPUSH", "l", b"a", 1, 2.5) == 3
            assert await r.execute("LRANGE", "l", 0, -1) == [b"a", b"1", b"2.5"]
            stats = r.statistics()
            assert stats.connected and stats.commands == 7 and stats.requests == 7

    run(main)


@integration
def test_pipeline_of_100(redis):
    async def main():
        async with await open_redis("127.0.0.1", redis.port) as r:
            replies = await r.pipeline([("INCR", "c")] * 100)
            assert replies == list(range(1, 101))
            assert await r.pipeline([]) == []
            assert r.statistics().requests == 1

    run(main)


@integration
def test_error_replies(redis):
    async def main():
        async with await open_redis("127.0.0.1", redis.port) as r:
            await r.execute("SET", "s", "x")
            with pytest.raises(RedisReplyError) as info:
                await r.execute("INCR", "s")
            assert info.value.code == "ERR" and "not an integer" in str(info.value)
            with pytest.raises(RedisReplyError) as info:
                await r.execute("LPUSH", "s", "x")
            assert info.value.code == "WRONGTYPE"
            with pytest.raises(RedisReplyError) as info:
                await r.execute("EVALSHA", "0" * 40, 0)
            assert info.value.code == "NOSCRIPT"
            replies = await r.pipeline(
                [("SET", "a", 1), ("INCR", "s"), ("NOSUCHCMD",), ("INCR", "a")]
            )
            assert replies[0] == b"OK" and replies[3] == 2
            assert isinstance(replies[1], hiredis.ReplyError)
            assert isinstance(replies[2], hiredis.ReplyError) and "unknown command" in str(
                replies[2]
            )
            # a transaction's error inside EXEC comes back nested, in place
            replies = await r.pipeline([("MULTI",), ("INCR", "a"), ("INCR", "s"), ("EXEC",)])
            assert replies[:3] == [b"OK", b"QUEUED", b"QUEUED"]
            assert replies[3][0] == 3 and isinstance(replies[3][1], hiredis.ReplyError)
            # the connection is still in step
            assert await r.execute("PING") == b"PONG"
            assert r.statistics().error_replies == 5 and r.statistics().drops == 0

    run(main)


@integration
def test_large_values(redis):
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB, every byte value, \r\n inside

    async def main():
        async with await open_redis("127.0.0.1", redis.port, timeout_s=30) as r:
            assert await r.execute("SET", "big", big) == b"OK"
            assert await r.execute("GET", "big") == big
            replies = await r.pipeline([("GET", "big"), ("STRLEN", "big"), ("GET", "big")])
            assert replies == [big, len(big), big]

    run(main)


@integration
def test_concurrent_requests_each_get_their_own_reply(redis):
    async def main():
        async with await open_redis("127.0.0.1", redis.port) as r:
            got = {}

            async def one(i):
                if i % 3:
                    got[i] = await r.execute("ECHO", f"v{i}")
                else:
                    got[i] = await r.pipeline([("ECHO", f"v{i}"), ("ECHO", f"w{i}")])

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(one, i)
            for i in range(60):
                want = [f"v{i}".encode(), f"w{i}".encode()] if i % 3 == 0 else f"v{i}".encode()
                assert got[i] == want

    run(main)


@integration
def test_select_db(redis):
    async def main():
        async with await open_redis_url(f"redis://127.0.0.1:{redis.port}/3") as r3:
            await r3.execute("SET", "only3", "x")
            async with await open_redis("127.0.0.1", redis.port) as r0:
                assert await r0.execute("EXISTS", "only3") == 0
            # SELECT is redone after a reconnect
            await r3.reconnect()
            assert await r3.execute("GET", "only3") == b"x"

    run(main)


@integration
def test_connection_refused():
    (port,) = free_ports(1)

    async def main():
        with pytest.raises(RedisUnavailable) as info:
            await open_redis("127.0.0.1", port, timeout_s=2)
        assert isinstance(info.value, StoreUnavailable)
        r = RedisClient("127.0.0.1", port, backoff_initial_s=10)
        with pytest.raises(RedisUnavailable):
            await r.execute("PING")
        # inside the backoff period we fail fast without trying to connect
        with pytest.raises(RedisUnavailable, match="retrying later"):
            await r.execute("PING")
        assert r.statistics().connect_failures == 1
        with pytest.raises(RedisUnavailable):
            await r.wait_connected(timeout_s=0.2)
        await r.aclose()
        with pytest.raises(LocalProtocolError):
            await r.execute("PING")

    run(main)


@integration
def test_server_killed_then_restarted(redis):
    async def main():
        r = await open_redis(
            "127.0.0.1", redis.port, timeout_s=5, backoff_initial_s=0.01, backoff_max_s=0.1
        )
        async with r:
            assert await r.execute("SET", "k", "v") == b"OK"
            redis.kill()
            with pytest.raises(RedisUnavailable):
                await r.execute("GET", "k")
            assert not r.connected
            with pytest.raises(RedisUnavailable):
                await r.pipeline([("PING",)] * 10)
            with pytest.raises(RedisUnavailable):
                await r.reconnect()
            redis.start()  # same port, empty (nothing persisted)
            await r.reconnect()
            assert await r.execute("GET", "k") is None
            assert await r.execute("PING") == b"PONG"
            # and the lazy path: kill, restart, the next request reconnects by itself
            redis.kill()
            with pytest.raises(RedisUnavailable):
                await r.execute("PING")
            redis.start()
            await r.wait_connected(timeout_s=10)
            assert await r.execute("PING") == b"PONG"
            assert r.statistics().connects == 3

    run(main)


@integration
def test_server_killed_while_requests_wait(redis):
    """Every request queued behind the lock gets RedisUnavailable, none hangs."""

    async def main():
        async with await open_redis("127.0.0.1", redis.port, backoff_initial_s=0.01) as r:
            outcomes = []

            async def blocked():
                try:
                    await r.execute("BLPOP", "nothing", 0)
                except RedisUnavailable:
                    outcomes.append("blpop unavailable")

            async def queued(i):
                try:
                    await r.execute("PING")
                    outcomes.append("pong")
                except RedisUnavailable:
                    outcomes.append("unavailable")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked)
                await trio.testing.wait_all_tasks_blocked()
                for i in range(5):
                    nursery.start_soon(queued, i)
                await trio.testing.wait_all_tasks_blocked()
                assert r.statistics().waiting == 5
                redis.kill()
            assert outcomes[0] == "blpop unavailable"
            assert len(outcomes) == 6

    run(main)


@integration
def test_cancelled_request_does_not_leave_connection_out_of_step(redis):
    async def main():
        async with await open_redis("127.0.0.1", redis.port) as r:
            async with await open_redis("127.0.0.1", redis.port) as other:
                with trio.move_on_after(0.2) as scope:
                    await r.execute("BLPOP", "q", 10)
                assert scope.cancelled_caught
                # had the connection been kept, this PING would read BLPOP's reply
                await other.execute("RPUSH", "q", "late")
                assert await r.execute("PING") == b"PONG"
                assert r.statistics().drops == 1

    run(main)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_read_timeout_against_silent_server():
    async def main():
        async def silent(stream):
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            r = await open_redis("127.0.0.1", port, timeout_s=0.3)
            with pytest.raises(RedisUnavailable, match="did not answer"):
                await r.execute("PING")
            assert not r.connected
            # connect-time setup (SELECT) is bounded too
            with pytest.raises(RedisUnavailable):
                await open_redis("127.0.0.1", port, db=1, timeout_s=0.3)
            await r.aclose()
            nursery.cancel_scope.cancel()

    run(main)
