"""The publish API's request timeout without a cancel scope per connection: a connection that
has not finished its exchange ``REQUEST_TIMEOUT_S`` after it was accepted is closed by the
sweeper (within ``SWEEP_S``); an answered one leaves nothing behind; a stop returns as soon as
the last connection is done.  A real listener on 127.0.0.1, trio's virtual clock."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from broker.config import Config
from broker.ingest import httpapi
from broker.ingest.httpapi import REQUEST_TIMEOUT_S, SWEEP_S, HttpApi


class FakePipeline:
    """What ``GET /`` touches of the pipeline (it publishes nothing)."""

    presence = SimpleNamespace(answer=lambda method, url: None)
    store = None  # not the memory store: no connection is served inline

    def received(self, source: str) -> None:
        pass


class OpenAuth:
    def check(self, *args) -> None:
        return None


def api() -> HttpApi:
    return HttpApi(Config(), FakePipeline(), OpenAuth())  # type: ignore[arg-type]


async def start(nursery: trio.Nursery, server: HttpApi) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(server.serve, listeners)
    return port


def run(test) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_stalled_request_is_closed_after_the_timeout():
    async def main() -> None:
        server = api()
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"POST /publish/ HTTP/1.1\r\nContent-Len")  # and nothing more
            t0 = trio.current_time()
            with trio.move_on_after(REQUEST_TIMEOUT_S - 2 * SWEEP_S):
                early = await client.receive_some(100)
                raise AssertionError(f"the server answered or closed too early: {early!r}")
            assert trio.current_time() - t0 >= REQUEST_TIMEOUT_S - 2 * SWEEP_S
            assert await client.receive_some(100) == b""  # closed by the server
            waited = trio.current_time() - t0
            assert REQUEST_TIMEOUT_S - 0.1 <= waited <= REQUEST_TIMEOUT_S + SWEEP_S + 0.1
            while server.active:
                await trio.sleep(0.01)
            assert not server._deadlines
            await client.aclose()
            server.stop_accepting()

    run(main)


def test_an_answered_request_leaves_no_deadline_and_a_stop_is_prompt():
    async def main() -> None:
        server = api()
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := await client.receive_some(1000):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(b"Pushpin API\n")
            assert not server._deadlines
            await client.aclose()
            t0 = trio.current_time()
            server.stop_accepting()
        # the sweeper saw the stop at once: no wait for its next round
        assert trio.current_time() - t0 < SWEEP_S / 2

    run(main)


def test_a_stop_waits_for_the_open_connection_then_its_timeout():
    async def main() -> None:
        server = api()
        t_stop = 0.0
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"GET / HTTP/1.1\r\n")  # a head never finished
            await trio.sleep(1)
            t_stop = trio.current_time()
            server.stop_accepting()  # serve now returns once that connection is gone
        took = trio.current_time() - t_stop
        assert REQUEST_TIMEOUT_S - 1 - 0.1 <= took <= REQUEST_TIMEOUT_S + SWEEP_S
        assert await client.receive_some(100) == b""
        await client.aclose()

    run(main)


def test_the_sweep_interval_keeps_the_timeout_within_a_second():
    assert 0 < httpapi.SWEEP_S <= 1.0 < httpapi.REQUEST_TIMEOUT_S
