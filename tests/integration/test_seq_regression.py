"""A channel whose seq went backwards is an epoch change, never silent (docs/cluster.md, "Seq
went backwards").  A Redis master failing over without ``redis_wait_replicas`` can lose
acknowledged writes: the promoted replica's seq for the channel is lower than what the broker
handed out and the edges delivered, and the next publishes would reuse those seqs (edges would
drop them as duplicates: clients silently miss them).

``test_real_failover_to_a_replica_that_missed_writes`` loses them for real: a master and its
replica (real ``redis-server`` replication), the broker reaching the master through a TCP
relay (the stand-in for a virtual IP or DNS name that a failover moves); the replica is cut off
from its master (``REPLICAOF NO ONE``: promoted with m1..m3) before m4 and m5 are published
and acknowledged by the master; the master is killed and the relay moved to the promoted
replica.  The next publish must start a new epoch, and the clients be told.

The broker that sequenced m4 and m5 remembers seq 5, so that publish moves the channel to a new
epoch in Redis before sequencing; the edge sees the new epoch and takes the epoch-change path
(SSE stream closed, long-poll answered now).

``test_edge_that_delivered_the_higher_seq_tells_its_clients`` emulates the loss in the Redis in
use: after m1..m5 were acknowledged and delivered, the channel's meta hash is set back to seq 3
(``HSET``) and its stream trimmed to its first 3 entries (``XTRIM MAXLEN = 3``), i.e. the keys
as a replica that missed the last two writes holds them once promoted; then the broker is
restarted, so it remembers nothing and answers the edge's position request with the same epoch
and seq 3; the edge, which delivered seq 5, takes the same path.
Real broker, edge, Redis and HTTP clients."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from gripcontrol import GripPubControl

from bench.redisprocs import command, info
from tests.helpers import MISSING, free_port_block, wait_for
from tests.integration.cluster import Cluster, Origin, StreamClient
from tests.integration.test_epoch_change import held
from tests.integration.test_faults import restart_broker
from tests.redis_server import RedisServer, redis_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not redis_available(), reason=MISSING + "redis-server is not installed"),
]

POLL_TIMEOUT_S = 40


def hold(kind: str):
    def handler(req):
        ch = req.path.rsplit("/", 1)[1]
        if kind == "poll":
            return (
                200,
                {
                    "Content-Type": "text/plain",
                    "Grip-Hold": "response",
                    "Grip-Channel": ch,
                    "Grip-Timeout": str(POLL_TIMEOUT_S),
                },
                b"poll timeout\n",
            )
        return (
            200,
            {"Content-Type": "text/event-stream", "Grip-Hold": "stream", "Grip-Channel": ch},
            b": open\n\n",
        )

    return handler


def lose_writes(port: int, channel: str, keep: int) -> None:
    """The channel's keys as a promoted replica that missed the writes after ``keep`` has them."""
    command(port, "HSET", f"gc:m:{channel}", "seq", keep, "last_id", "")
    command(port, "XTRIM", f"gc:h:{channel}", "MAXLEN", "=", keep)


def scenario(setup, channel: str, restart: bool, lose=None) -> None:
    """Hold an SSE stream and a long-poll on ``channel``, publish m1..m5, lose the writes after
    m3 (``lose()``, else ``lose_writes``), then publish m6 or restart the broker: both sessions
    must take the epoch-change path."""
    cl, mport, relay = setup.cl, setup.mport, setup.relay
    pub = GripPubControl({"control_uri": cl.publish_url})
    e = StreamClient(cl.url(f"/sse/{channel}"))
    e.read_until(b": open\n\n")
    wait_for(lambda: held(mport, "stream") >= 1, what="the SSE stream is not held")
    for n in range(1, 6):
        if n == 4 and lose is not None:
            lose.before_m4()
        pub.publish_http_stream(channel, f"data: m{n}\n\n", blocking=True)
    e.read_until(b"data: m5\n\n")
    poll: dict = {}

    def do_poll():
        r = httpx.get(cl.url(f"/poll/{channel}"), timeout=POLL_TIMEOUT_S + 10)
        poll["at"], poll["response"] = time.monotonic(), r

    t = threading.Thread(target=do_poll, daemon=True)
    t.start()
    wait_for(lambda: held(mport, "response") >= 1, what="the long-poll is not held")
    try:
        at = time.monotonic()
        if lose is None:
            lose_writes(relay.target, channel, 3)  # in the Redis the broker uses now
        else:
            lose()
        if restart:
            restart_broker(cl)  # forgets the seqs it saw: the edge's position check decides
        else:
            publish_until_stored(cl, channel, "data: m6\n\n")
        e.read_to_end(timeout=20)
        assert e.ended, "the SSE stream went on across a seq that went backwards"
        assert isinstance(getattr(e, "error", None), httpx.RemoteProtocolError), e.data
        t.join(20)
        assert "response" in poll, "the long-poll was not answered"
        assert poll["response"].text == "poll timeout\n"  # answered now, not at its timeout
        assert poll["at"] - at < POLL_TIMEOUT_S / 2
        assert b"data: m6" not in e.data  # nothing of the new epoch went out on the old stream
    finally:
        e.close()


def publish_until_stored(cl, channel: str, content: str, timeout: float = 20.0) -> None:
    """POST one item until the broker acknowledges it (503 while its store reconnects)."""
    item = {"channel": channel, "formats": {"http-stream": {"content": content}}}
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(cl.publish_url + "/publish/", json={"items": [item]}, timeout=10)
        if r.status_code == 200:
            return
        assert r.status_code == 503 and time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(0.1)  # the store reconnects with backoff; retrying a refused publish


class Relay:
    """A TCP relay on ``port`` to ``127.0.0.1:target`` (what a virtual IP is to the Redis
    master); ``move(target)`` cuts every relayed connection and sends new ones to ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def move(self, target: int) -> None:
        self.target = target
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.lsock.close()
        self.move(self.target)


class Failover:
    """The replica stops replicating before m4 (promoted with m1..m3); after m5 the master dies
    and the relay moves to the replica: m4 and m5, acknowledged, are lost."""

    def __init__(self, master, replica, relay: Relay) -> None:
        self.master, self.replica, self.relay = master, replica, relay

    def before_m4(self) -> None:
        m = info(self.master.port)
        wait_for(
            lambda: (
                info(self.replica.port).get("master_repl_offset") == m["master_repl_offset"]
                and info(self.replica.port).get("master_link_status") == "up"
            ),
            what="the replica did not catch up with m1..m3",
        )
        assert command(self.replica.port, "REPLICAOF", "NO", "ONE") == b"OK"

    def __call__(self) -> None:
        self.master.kill()
        self.relay.move(self.replica.port)


class Setup:
    """The module's processes: a Redis master and its replica, the relay the broker reaches
    Redis through, the origin, one broker and one edge."""

    def __init__(self, tmp) -> None:
        self.mport = free_port_block(1)
        self.master, self.replica = RedisServer(), RedisServer()
        routes = {f"/{kind}/{c}": hold(kind) for kind in ("sse", "poll") for c in ("f1", "b2")}
        self.origin = Origin(routes).__enter__()  # serving now: close() shuts it down
        self.relay: Relay | None = None
        self.tmp = tmp

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        assert command(self.replica.port, "REPLICAOF", "127.0.0.1", self.master.port) == b"OK"
        self.relay = Relay(self.master.port)
        self.cl = Cluster(
            self.tmp,
            [f"* 127.0.0.1:{self.origin.port}"],
            edge_metrics_port=self.mport,
            store=f"redis://127.0.0.1:{self.relay.port}/0",
            broker_link_timeout_s=1.0,
        ).start()

    def close(self) -> None:
        if getattr(self, "cl", None) is not None:
            self.cl.stop()
        if self.relay is not None:
            self.relay.close()
        self.origin.__exit__(None, None, None)
        self.replica.close()
        self.master.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = Setup(tmp_path_factory.mktemp("seqback"))
    try:
        s.start()
        yield s
    finally:
        s.close()


def test_real_failover_to_a_replica_that_missed_writes(setup):
    scenario(setup, "f1", False, Failover(setup.master, setup.replica, setup.relay))
    meta = command(setup.replica.port, "HGETALL", "gc:m:f1")
    fields = dict(zip(meta[::2], meta[1::2]))
    assert fields[b"seq"] == b"1"  # m6: seq 1 of a new epoch, not a second seq 4


def test_edge_that_delivered_the_higher_seq_tells_its_clients(setup):
    """The loss written into the Redis in use (``lose_writes``), then the broker restarted: it
    remembers no seq, answers the edge's position with the lower one, and the edge decides."""
    scenario(setup, "b2", restart=True)
    assert metric(setup.mport, "gripcast_edge_seq_regressions_total") >= 1


def metric(port: int, name: str) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")
