"""broker.runtime.zmqtrio on inproc sockets: batches, parking, wake-ups, the wiring table."""

from __future__ import annotations

import trio
import zmq

from broker.config import ENDPOINTS, WIRING, Config
from broker.runtime.zmqtrio import ZSocket, open_zsocket


def _pair(ctx: zmq.Context, name: str) -> tuple[zmq.Socket, ZSocket]:
    rx = ctx.socket(zmq.PULL)
    rx.setsockopt(zmq.LINGER, 0)
    rx.bind(f"inproc://{name}")
    tx = ctx.socket(zmq.PUSH)
    tx.setsockopt(zmq.LINGER, 0)
    tx.connect(f"inproc://{name}")
    return tx, ZSocket(rx, name)


def test_drains_a_full_queue_in_bounded_batches() -> None:
    ctx = zmq.Context()
    tx, z = _pair(ctx, "batches")
    for i in range(1500):
        tx.send(b"%d" % i)
    seen: list[list[bytes]] = []

    async def main() -> None:
        async def handle(batch: list[bytes]) -> None:
            seen.append(batch)
            if sum(map(len, seen)) == 1500:
                raise _Done()

        try:
            await z.serve(lambda: z.recv_frames(600), handle)
        except _Done:
            pass

    trio.run(_timed, main)
    assert [len(b) for b in seen] == [600, 600, 300]
    assert [int(f) for b in seen for f in b] == list(range(1500))  # in order, none lost
    z.close(), tx.close(), ctx.term()


class _Done(Exception):
    pass


async def _timed(main) -> None:
    with trio.fail_after(5):
        await main()


def test_parked_reader_wakes_for_a_later_message_and_on_poke() -> None:
    ctx = zmq.Context()
    tx, z = _pair(ctx, "park")
    got: list[bytes] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def handle(batch: list[bytes]) -> None:
                got.extend(batch)
                if len(got) == 2:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(z.serve, lambda: z.recv_frames(10), handle)
            await trio.sleep(0.05)  # the reader is parked on the FD now
            assert z._parked
            z.poke()  # nothing to read: the parked reader is left parked
            await trio.sleep(0.05)
            assert got == [] and z._parked
            tx.send(b"a")
            tx.send(b"b")

    trio.run(_timed, main)
    assert got == [b"a", b"b"]
    z.close(), tx.close(), ctx.term()


def test_send_on_the_socket_wakes_its_parked_reader() -> None:
    """A send can consume the edge the reader waits for (DEALER/ROUTER on one FD)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("inproc://wake")
    dealer = ZSocket(ctx.socket(zmq.DEALER), "dealer")
    dealer.sock.setsockopt(zmq.LINGER, 0)
    dealer.sock.connect("inproc://wake")
    replies: list[bytes] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def handle(batch: list[bytes]) -> None:
                replies.extend(batch)
                nursery.cancel_scope.cancel()

            nursery.start_soon(dealer.serve, lambda: dealer.recv_frames(10), handle)
            await trio.sleep(0.02)
            assert dealer.send_frame(b"ping")
            ident, msg = await trio.to_thread.run_sync(router.recv_multipart)
            router.send_multipart([ident, b"pong:" + msg])

    trio.run(_timed, main)
    assert replies == [b"pong:ping"]
    dealer.close(), router.close(), ctx.term()


def test_closing_the_socket_ends_its_parked_reader() -> None:
    """A poke wakes the reader through notify_closing, which it takes for a poke; a real
    close raises ClosedResourceError out of ``serve`` as before."""
    ctx = zmq.Context()
    tx, z = _pair(ctx, "closing")
    raised: list[type] = []

    async def main() -> None:
        async def reader() -> None:
            try:
                await z.serve(lambda: z.recv_frames(10), lambda batch: trio.sleep(0))
            except trio.ClosedResourceError as exc:
                raised.append(type(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.05)
            assert z._parked
            z.close()

    trio.run(_timed, main)
    assert raised == [trio.ClosedResourceError]
    tx.close(), ctx.term()


def test_send_would_block_is_counted_not_raised() -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 1)
    z = ZSocket(push, "push")  # no peer: the first send would block
    assert z.send_frame(b"x") is False and z.send([b"y"]) is False
    assert z.send_dropped == 2
    z.close(), ctx.term()


def test_wiring_table_builds_the_sockets_it_describes() -> None:
    cfg = Config(edge_pub_sndhwm=7, edge_sub_rcvhwm=9)
    ctx = zmq.Context()
    pub = open_zsocket(ctx, ENDPOINTS["edge_pub"], cfg, "inproc://edge_pub")
    sub = open_zsocket(ctx, ENDPOINTS["link_sub"], cfg, "inproc://edge_pub")
    assert pub.sock.type == zmq.XPUB and pub.sock.getsockopt(zmq.SNDHWM) == 7
    assert pub.sock.getsockopt(zmq.RCVHWM) == 0  # subscriptions never dropped
    assert sub.sock.type == zmq.SUB and sub.sock.getsockopt(zmq.RCVHWM) == 9
    assert sub.sock.getsockopt(zmq.SNDHWM) == 0
    pub.close(), sub.close(), ctx.term()


def test_wiring_table_covers_every_socket_once() -> None:
    names = [ep.name for ep in WIRING]
    assert len(names) == len(set(names))
    assert {
        "push_in",
        "sub_in",
        "command",
        "edge_pub",
        "edge_ctl",
        "http_api",
        "stats",
        "zap",
        "broker_ops",
        "edge_ops",
        "client",
        "link_sub",
        "link_ctl",
    } == set(names)
    for ep in WIRING:
        assert ep.port_key == "" or hasattr(Config(), ep.port_key), ep
        assert ep.bind_key == "" or hasattr(Config(), ep.bind_key), ep
        if ep.kind not in ("HTTP", "TCP"):
            assert hasattr(zmq, ep.kind), ep
            for opt, value in ep.options:
                assert hasattr(zmq, opt) and (
                    not isinstance(value, str) or hasattr(Config(), value)
                ), ep
    from broker import curve

    assert {ep.name for ep in WIRING if ep.curve == "server"} == set(curve.EDGE_SOCKETS)
    assert {ep.name for ep in WIRING if ep.curve == "server-publishers"} == set(
        curve.PUBLISHER_SOCKETS
    )
    assert ENDPOINTS["zap"].address == curve.ZAP_ENDPOINT
