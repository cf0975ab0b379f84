"""A broker cut off the network for real, and restored (issue #15), with loss accounting.

Two brokers share one standalone redis-server; each broker is on its own "host", a network
namespace joined to the root namespace by two veth pairs (``bench.netcut``): its edge link
(XPUB and edge ROUTER, plain TCP with ZMTP heartbeats) and its service link (HTTP publish API,
its connection to Redis, which listens on a root-namespace "hub" address).  Redis, two edges, the origin (cursor resume on), 150 SSE and 150
WebSocket clients and the publishers are in the root namespace; ``bench.chaos`` drives the
clients (they resume by cursor when cut, some are cut on purpose) and the publishers (each
item POSTed to a random broker, retried on another with the same id, acknowledged on 200).

Broker 1 is cut twice while publishing goes on (the namespace end of a link set down: packets
vanish, TCP stalls, nothing is reset), each time for longer than the heartbeats take to drop
its links, then restored:

* ``link_cut``: its edge link only.  It keeps taking publishes, storing and acknowledging
  them, and fans them out into the void: the edges must repair them from history (asked of
  broker 0).
* ``host_cut``: both links.  Publishes sent to it time out and are not acknowledged (the
  publisher retries them on broker 0); what it stored anyway is delivered everywhere.

Then (``bench.chaos.Run.account``, per client against each channel's history read back from
the brokers): every acknowledged message reached every subscribed client exactly once, in
order; a message not acknowledged reached every subscribed client or none.  And the edges
noticed broker 1's loss each time, and took it back after each restore (their logs), while
broker 0 was never lost.

Needs root and ``ip netns`` (CI runs as root); skipped otherwise, with the reason.
"""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest

from bench.chaos import ChaosConfig, Fault, run_on
from bench.netcut import NetcutCluster, netns_unavailable
from bench.redisprocs import redis_available
from tests.helpers import skip_missing, wait_for
from tests.integration.cluster import StreamClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# broker heartbeats every 1 s: the edges call a broker lost after 2.5 s without one (not less:
# a loaded machine must not make broker 0 look lost); ZMTP heartbeats drop a silent link after
# 1.5 s; a cut lasts longer than both
LINK_TIMEOUT_S = 2.5
HOLD_S = 3.5


def config(**kw) -> ChaosConfig:
    base = dict(
        seed=15,
        duration_s=11.0,
        redis="standalone",
        brokers=2,
        edges=2,
        sse_clients=150,
        ws_clients=150,
        channels=4,
        publishers=4,
        publish_rate=20.0,
        churn_per_s=3.0,
        settle_s=15.0,  # a correct run settles within a second or two
    )
    base.update(kw)
    return ChaosConfig(**base)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = netns_unavailable()
    if reason:
        skip_missing(reason)
    if not redis_available():
        skip_missing("redis-server not installed")
    c = NetcutCluster(
        config(), tmp_path_factory.mktemp("netcut"), broker_link_timeout_s=LINK_TIMEOUT_S
    )
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_a_broker_cut_off_and_restored(cluster):
    plan = [
        Fault(1.0, "link_cut", 1, HOLD_S),  # fans out into the void, still acknowledges
        Fault(6.0, "host_cut", 1, HOLD_S),  # its publishes time out: not acknowledged
    ]
    r = run_on(cluster, config(), plan, log=print)
    detail = (r["examples"], r["timeline"])
    kinds = [e["kind"] for e in r["timeline"] if "error" not in e]
    assert kinds == ["link_cut", "host_cut"], r["timeline"]
    assert r["acknowledged"] > 50, r
    assert r["lost"] == 0 and r["lost_in_store"] == 0, detail
    assert r["duplicated"] == 0, detail
    assert r["order_errors"] == 0 and r["outside_history"] == 0, detail
    assert r["unacked_partial"] == 0 and r["unacked_delivered_not_stored"] == 0, detail
    assert r["clients_received"] == r["clients"] == 300, detail
    assert r["churned"] >= 10, r  # clients did resume by cursor meanwhile
    assert r["ok"], r
    # the edge-only cut: broker 1 went on storing (and acknowledging) what went into the void
    assert r["timeline"][0].get("stored_while_cut", 0) > 0, r["timeline"]
    # the host cut: publishes sent to broker 1 got no answer; retried on broker 0
    assert r["retried_ok"] > 0, r

    # the edges noticed broker 1's loss once per cut (the second one after it was back from
    # the first), never broker 0's; and after each restore they took broker 1 back: their SUBs
    # subscribed again (broker 1 answered with position markers)
    for e in range(2):
        text = cluster.log_text(f"edge{e}")
        assert len(re.findall(lost_line(cluster, 1), text)) >= 2, text[-3000:]
        assert not re.search(lost_line(cluster, 0), text), text[-3000:]
    for entry in r["timeline"]:
        assert entry["resubscribed_s"] is not None, r["timeline"]


def lost_line(cluster: NetcutCluster, i: int) -> str:
    """The edge's log line for broker ``i`` lost (edge.server.serve_link_repair)."""
    ctl = f"{cluster.hosts.addr(i, 'e', 'ns')}:{cluster.broker_ports[i]['edge_ctl_port']}"
    return rf"broker lost: .* broker=tcp://{re.escape(ctl)};"


def sse_item(channel: str, pid: str) -> dict:
    return {
        "channel": channel,
        "id": pid,
        "formats": {"http-stream": {"content": f"id: {pid}\ndata: {pid}\n\n"}},
    }


def test_what_a_cut_off_broker_stored_reaches_the_clients_after_restore(cluster):
    """The tail: a message acknowledged by broker 1 after the edges gave it up (and resynced
    from broker 0), fanned out into the void, and nothing published after it: the edges
    repair it when broker 1 is back, without another publish."""
    ch = "netcut-tail"
    clients = [
        StreamClient(f"http://127.0.0.1:{port}/sse/{ch}")
        for port in cluster.edge_ports
        for _ in range(2)
    ]
    try:
        for c in clients:
            assert c.wait_open().status == 200
        r = httpx.post(cluster.publish_url(0), json={"items": [sse_item(ch, "t0")]}, timeout=5)
        assert r.status_code == 200, r.text
        for c in clients:
            c.read_until(b"data: t0\n")
        seen = [
            len(re.findall(lost_line(cluster, 1), cluster.log_text(f"edge{e}"))) for e in (0, 1)
        ]
        cluster.hosts.cut(1, "link_cut")
        try:
            wait_for(
                lambda: all(
                    len(re.findall(lost_line(cluster, 1), cluster.log_text(f"edge{e}"))) > seen[e]
                    for e in (0, 1)
                ),
                timeout=10,
                what="the edges to give broker 1 up",
            )
            r = httpx.post(cluster.publish_url(1), json={"items": [sse_item(ch, "t1")]}, timeout=5)
            assert r.status_code == 200, r.text  # stored in Redis, fanned out into the void
            # acknowledged: broker 1 fanned it out right after storing it, into the void
            for k, c in enumerate(clients):
                assert b"t1" not in c.read_for(0.5 if k == 0 else 0.0), "the cut did not cut"
        finally:
            cluster.hosts.restore(1)
        for c in clients:
            data = c.read_until(b"data: t1\n", timeout=15)
            assert data.count(b"data: t1\n") == 1 and data.count(b"data: t0\n") == 1, data
    finally:
        for c in clients:
            c.close()


def test_a_publish_in_flight_to_a_broker_cut_off_is_not_acknowledged(cluster):
    """Broker 1's whole host is cut off while a publish is on its way to it (sent on a
    connection opened before the cut): no answer, not acknowledged; new connections to it
    fail.  After the restore the request may still reach broker 1 (TCP retransmits it) and be
    stored: then every client gets it, once and in history order; else none does.  Publishing
    goes on through broker 0 meanwhile."""
    ch = "netcut-inflight"
    clients = [
        StreamClient(f"http://127.0.0.1:{port}/sse/{ch}")
        for port in cluster.edge_ports
        for _ in range(2)
    ]
    host = cluster.hosts.addr(1, "s", "ns")
    port = cluster.broker_ports[1]["http_port"]
    sock = socket.create_connection((host, port), timeout=5)
    try:
        for c in clients:
            assert c.wait_open().status == 200
        r = httpx.post(cluster.publish_url(1), json={"items": [sse_item(ch, "f0")]}, timeout=5)
        assert r.status_code == 200, r.text
        for c in clients:
            c.read_until(b"data: f0\n")
        cluster.hosts.cut(1, "host_cut")
        try:
            body = json.dumps({"items": [sse_item(ch, "f1")]}).encode()
            head = (
                f"POST /publish/ HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)  # into the void (the kernel's send buffer)
            sock.settimeout(1.5)
            with pytest.raises(TimeoutError):
                sock.recv(1024)  # no answer: not acknowledged
            with pytest.raises(httpx.TransportError):  # no new connection either
                httpx.post(
                    cluster.publish_url(1), json={"items": [sse_item(ch, "fx")]}, timeout=1.5
                )
            r = httpx.post(cluster.publish_url(0), json={"items": [sse_item(ch, "f2")]}, timeout=5)
            assert r.status_code == 200, r.text  # the survivor takes publishes meanwhile
            for c in clients:
                c.read_until(b"data: f2\n")
        finally:
            sock.close()
            cluster.hosts.restore(1)
        # after the restore: a last publish through broker 1 (taken back), then history
        restored = time.monotonic()
        wait_for(
            lambda: post_ok(cluster.publish_url(1), sse_item(ch, "f3")),
            timeout=15,
            what="broker 1 to take publishes again",
        )
        print(f"broker 1 took publishes again {time.monotonic() - restored:.2f}s after the restore")
        for c in clients:
            c.read_until(b"data: f3\n", timeout=15)
        items = httpx.get(cluster.items_url(0, ch), timeout=5).json()["items"]
        history = [it.get("publisher_id", it["id"]) for it in items]
        print("history after the in-flight publish:", history)
        assert history[0] == "f0" and history[-1] == "f3", history
        assert set(history) <= {"f0", "f1", "f2", "fx", "f3"} and len(set(history)) == len(history)
        want = b"".join(f"data: {pid}\n".encode() for pid in history)
        for c in clients:
            got = b"".join(
                line + b"\n" for line in c.read_for(0.0).split(b"\n") if line.startswith(b"data: ")
            )
            assert got == want, (got, history)  # f1: everywhere (stored) or nowhere
    finally:
        for c in clients:
            c.close()


def post_ok(url: str, item: dict) -> bool:
    try:
        return httpx.post(url, json={"items": [item]}, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
