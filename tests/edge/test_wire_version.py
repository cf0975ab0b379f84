"""An edge refuses a broker of another wire version (broker/wire.py ``WIRE_VERSION``).

A tiny fake broker (pyzmq ROUTER on the edge_ctl port, XPUB on edge_pub) answers ``hello``
with another version, refuses the hello as a newer broker does, or stays silent on the
control socket while its heartbeats carry another version: each time the edge logs an ERROR
naming both versions and exits with ``EXIT_CONFIG`` (78), the way a cluster_id mismatch does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import msgpack
import pytest
import zmq

from broker import wire
from broker.config import load_config
from broker.errors import EXIT_CONFIG
from tests.helpers import free_ports, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OTHER = wire.WIRE_VERSION + 1


class VersionedFakeBroker:
    """ROUTER + XPUB in a thread; ``mode``: "reply" (hello reply of version OTHER), "refuse"
    (an error reply naming both versions), "silent" (no control answers; heartbeats of
    version OTHER)."""

    def __init__(self, pub_port: int, ctl_port: int, mode: str) -> None:
        self.mode = mode
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://127.0.0.1:{pub_port}")
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.bind(f"tcp://127.0.0.1:{ctl_port}")
        self.hellos: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pub, zmq.POLLIN)
        poller.register(self.ctl, zmq.POLLIN)
        beat = HEARTBEAT = wire.HEARTBEAT_TOPIC + msgpack.packb(
            {"broker_id": "other", "started": 0.0, "ts": 0.0, "wire": OTHER}
        )
        while not self.stop.is_set():
            events = dict(poller.poll(50))
            if self.pub in events:
                self.pub.recv()
            if self.mode == "silent":
                self.pub.send(beat)  # every 50 ms: the edge cannot miss one
                beat = HEARTBEAT
            if self.ctl in events:
                ident, frame = self.ctl.recv_multipart()
                m = wire.decode_control(frame)
                if m.get("op") != "hello" or self.mode == "silent":
                    continue
                self.hellos.append(m)
                if self.mode == "reply":
                    rep = wire.HelloReply(m.get("rid"), "other", 0.0, "", OTHER)
                else:
                    rep = wire.ErrorReply(m.get("rid"), wire.version_mismatch(m["wire"], OTHER))
                self.ctl.send_multipart([ident, wire.encode_reply(rep)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pub.close(0)
        self.ctl.close(0)
        self.ctx.term()


@pytest.mark.parametrize("mode", ["reply", "refuse", "silent"])
def test_edge_refuses_a_broker_of_another_wire_version(mode):
    edge_port, pub_port, ctl_port = free_ports(3)
    broker = VersionedFakeBroker(pub_port, ctl_port, mode)
    cfg = load_config(
        env={},
        overrides={
            "client_addr": "127.0.0.1",
            "client_port": edge_port,
            "broker_host": "127.0.0.1",
            "edge_pub_port": pub_port,
            "edge_ctl_port": ctl_port,
            "routes": ["* 127.0.0.1:9"],
        },
    )
    code = (
        "import json, sys; from broker.config import config_from_dict; "
        "from edge.server import main; sys.exit(main(config_from_dict(json.loads(sys.argv[1]))))"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg.to_dict())],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
        broker.close()
    assert proc.returncode == EXIT_CONFIG, err
    both = f"edge speaks wire version {wire.WIRE_VERSION}, broker speaks wire version {OTHER}"
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert any(both in line for line in errors), err
    if mode != "silent":
        assert broker.hellos and broker.hellos[0]["wire"] == wire.WIRE_VERSION
        assert "edge ready" not in err  # stopped by the hello gate, before serving
