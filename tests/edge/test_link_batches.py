"""The edge's broker link reads batch messages (wire version 4, ``broker.wire.BATCH_TOPIC``).

A real XPUB on loopback stands where the broker's edge_pub is and sends with the broker's own
``fan_out``; a real ``BrokerLink`` subscribes: it takes from each batch, in order, the frames
of the channels it holds and no other, subscribes to the batch topic while it holds a channel
(before the channel's own topic, so no batch of it is missed) and unsubscribes when it holds
none; a batch cut short is logged and skipped, the next ones still read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import zmq

from _speedups import fan_out
from broker import wire
from broker.config import Config
from edge.sync.link import BrokerLink
from tests.helpers import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _env(channel: str, seq: int) -> wire.Envelope:
    return wire.Envelope(
        channel, seq, "e", {"http-stream": {"content": b"%s%d" % (channel.encode(), seq)}}
    )


class _Broker:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        pub_port, ctl_port = free_ports(2)
        self.pub.bind(f"tcp://127.0.0.1:{pub_port}")
        self.endpoints = (f"tcp://127.0.0.1:{pub_port}", f"tcp://127.0.0.1:{ctl_port}")

    async def notices(self, n: int) -> list[bytes]:
        """The next ``n`` subscription notices."""
        got: list[bytes] = []
        with trio.fail_after(10):
            while len(got) < n:
                if self.pub.poll(0):
                    got.append(self.pub.recv())
                else:
                    await trio.sleep(0.01)
        return got

    def close(self) -> None:
        self.pub.close(0)
        self.ctx.term()


async def _until(got: list[bytes], n: int) -> None:
    with trio.fail_after(10):
        while len(got) < n:
            await trio.sleep(0.01)


def test_link_takes_its_channels_from_batches_in_order(caplog: pytest.LogCaptureFixture) -> None:
    broker = _Broker()
    link = BrokerLink(Config(), endpoints=broker.endpoints)
    got: list[bytes] = []

    async def on_frames(frames: list[bytes]) -> None:
        got.extend(frames)

    def seqs() -> list[tuple[str, int]]:
        out = []
        for f in got:
            if wire.is_heartbeat(f):
                continue
            e = wire.decode_frame(f)
            if isinstance(e, wire.Envelope):
                out.append((e.channel, e.seq))
        return out

    async def main() -> None:
        pub = broker.pub
        # hello (the heartbeat, recover topics) first: then the batch topic before a's topic
        base = await broker.notices(2)
        assert sorted(base) == sorted(
            [b"\x01" + wire.HEARTBEAT_TOPIC, b"\x01" + wire.RECOVER_TOPIC]
        )
        link.subscribe("a")
        link.subscribe("b")
        link.subscribe("a")  # again: nothing more
        assert await broker.notices(3) == [
            b"\x01" + wire.BATCH_TOPIC,
            b"\x01" + wire.topic("a"),
            b"\x01" + wire.topic("b"),
        ]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.serve_sub, on_frames)
            pub.send(wire.encode_heartbeat("b1", 0.0, 0.0))  # the wire version: ours
            envs = [_env("a", 1), _env("c", 1), _env("b", 1), _env("a", 2)]
            live = {"a", "b", "c"}  # c: live for another edge
            assert fan_out(pub, envs, live, {}, wire.BATCH_TOPIC) == (4, 0)
            pub.send(wire.encode_envelope(_env("b", 2)))  # a plain frame after the batch
            await _until(got, 5)  # the heartbeat too: it carries the trailing positions
            assert seqs() == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
            assert link.statistics().frames >= 5

            caplog.set_level(logging.WARNING, logger="edge.sync.link")
            cut = wire.BATCH_TOPIC + b"\x00\x00\x01\x00a\x00"  # says 256 bytes, has 2
            pub.send(cut)
            link.unsubscribe("b")
            assert await broker.notices(1) == [b"\x00" + wire.topic("b")]
            assert fan_out(pub, [_env("b", 3), _env("a", 3)], live, {}, wire.BATCH_TOPIC) == (2, 0)
            await _until(got, 6)
            assert seqs()[-1] == ("a", 3)
            assert "bad batch message" in caplog.text
            link.unsubscribe("a")  # none held: the batch topic goes too
            assert await broker.notices(2) == [
                b"\x00" + wire.topic("a"),
                b"\x00" + wire.BATCH_TOPIC,
            ]
            nursery.cancel_scope.cancel()
        assert seqs() == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]

    try:
        trio.run(main)
    finally:
        link.close()
        broker.close()


def test_batch_bytes_knob(tmp_path: Path) -> None:
    from broker.config import load_config
    from broker.errors import ConfigError

    assert Config().edge_pub_batch_bytes == 262_144
    path = tmp_path / "gripcast.toml"
    path.write_text("edge_pub_batch_bytes = 0\n")
    assert load_config(str(path), env={}).edge_pub_batch_bytes == 0  # off: a message a frame
    env = {"GRIPCAST_EDGE_PUB_BATCH_BYTES": "4096"}
    assert load_config(None, env=env).edge_pub_batch_bytes == 4096
    for bad in (-1, 1023, (64 << 20) + 1):
        path.write_text(f"edge_pub_batch_bytes = {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(str(path), env={})
        assert "edge_pub_batch_bytes: must be 0 (no batches) or 1024 to 67108864" in str(err.value)
