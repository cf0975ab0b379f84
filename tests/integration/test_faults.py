"""Fault injection: nothing lost, nothing duplicated, whatever fails (docs/reliability.md).

Real processes (broker, edges, a real redis-server), real clients (httpx SSE readers; one raw
socket for the client that stops reading).  Every test asserts that each client received
exactly the published sequence 0..N-1: in order, no gaps, no duplicates.  Messages carry no
publisher id: events are ``id: %(id)s`` and the edge writes the broker's ``epoch:seq``, which
clients send back as ``Last-Event-ID`` and the origin passes on as ``prev-id``.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import zmq

from broker.ingest import tnetstring
from tests.helpers import MISSING, free_port_block
from tests.integration.cluster import Cluster, Origin, Proc, gripcast
from tests.redis_server import RedisServer, redis_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CH = "faults"
T0 = time.monotonic()


def sse_app() -> Origin:
    """The SSE origin, with a listen backlog for 100 clients connecting at once."""
    origin = Origin({"/sse": sse_origin})
    origin.httpd.socket.listen(512)
    return origin


def sse_origin(req):
    """The two-line origin change: Last-Event-ID -> Grip-Channel prev-id."""
    last = req.headers.get("Last-Event-ID")
    channel = f"{CH}; prev-id={last}" if last else CH
    return (
        200,
        {"Content-Type": "text/event-stream", "Grip-Hold": "stream", "Grip-Channel": channel},
        b": open\n\n",
    )


def item(n: int, pad: int = 0) -> dict:
    content = f"id: %(id)s\ndata: {n}\n" + (f"data: {'x' * pad}\n" if pad else "") + "\n"
    return {"channel": CH, "formats": {"http-stream": {"content": content}}}


class SSE:
    """One EventSource-like client: reads events, reconnects with Last-Event-ID on failure."""

    def __init__(self, urls: list[str], expect: int) -> None:
        self.urls, self.expect = urls, expect
        self.got: list[int] = []
        self.times: list[float] = []
        self.last_id: str | None = None
        self.opened = asyncio.Event()
        self.connects = 0
        self.errors: list[str] = []

    async def run(self, client: httpx.AsyncClient | None = None) -> None:
        if client is None:
            async with shared_client() as client:
                return await self.run(client)
        if True:
            while len(self.got) < self.expect:
                url = self.urls[min(self.connects, len(self.urls) - 1)]
                self.connects += 1
                headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
                try:
                    async with client.stream("GET", url, headers=headers) as resp:
                        assert resp.status_code == 200
                        buf = b""
                        async for chunk in resp.aiter_raw():
                            buf += chunk
                            while b"\n\n" in buf:
                                event, buf = buf.split(b"\n\n", 1)
                                self._event(event)
                            if len(self.got) >= self.expect:
                                return
                except (httpx.HTTPError, OSError, AssertionError) as exc:
                    self.errors.append(f"{time.monotonic() - T0:.2f} {url[-8:]} {exc!r}")
                    await asyncio.sleep(0.05)

    def _event(self, event: bytes) -> None:
        fields: dict = {}
        for line in event.split(b"\n"):
            if b": " in line:
                k, v = line.split(b": ", 1)
                fields.setdefault(k, v)  # the first data line is the number
        if event.startswith(b":"):
            self.opened.set()
            return
        self.last_id = fields[b"id"].decode()
        self.got.append(int(fields[b"data"]))
        self.times.append(time.monotonic())


def shared_client() -> httpx.AsyncClient:
    """One client for many streams (creating an httpx client per stream costs ~50 ms)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(20.0, connect=5.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )


async def publish(
    client: httpx.AsyncClient, url: str, items: list[dict], deadline_s: float = 20.0
) -> None:
    """Publish until acknowledged (the broker may be restarting: retry what was refused)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            r = await client.post(url + "/publish", json={"items": items})
            if r.status_code == 200:
                return
            assert r.status_code == 503, r.text
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "publish never acknowledged"
        await asyncio.sleep(0.05)


async def finish(
    tasks, clients, timeout_s: float = 30.0, http: httpx.AsyncClient | None = None
) -> None:
    """Wait for every client to complete (then close their shared ``http`` client); on timeout
    say how far each got."""
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if http is not None:
        await http.aclose()
    for t in done:
        t.result()
    assert not pending, "clients did not complete: " + ", ".join(
        f"{len(c.got)} msgs/{c.connects} connects" for c in clients if len(c.got) < c.expect
    )


def assert_exact(clients, n: int) -> None:
    for i, c in enumerate(clients):
        bad = next((k for k, (a, b) in enumerate(zip(c.got, range(n))) if a != b), len(c.got))
        assert c.got == list(range(n)), (
            f"client {i}: {len(c.got)} messages, first bad index {bad}: "
            f"{c.got[max(bad - 3, 0) : bad + 3]} connects={c.connects} errors={c.errors}"
        )


def metrics(port: int) -> dict:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def two_free_ports() -> int:
    """A port p with p and p + 1 free (edge i's metrics listen on edge_metrics_port + i)."""
    return free_port_block(2)


# -- kill -9 one edge under 100 SSE clients ---------------------------------------------------


def test_edge_killed_clients_resume_on_the_other_edge(tmp_path):
    n, kill_at, nclients = 200, 80, 100
    with sse_app() as origin:
        with Cluster(tmp_path, [f"* 127.0.0.1:{origin.port}"], edges=2, separate_ports=True) as cl:
            urls = [cl.url("/sse", 0), cl.url("/sse", 1)]
            # 80 clients on edge 0 (killed), 20 on edge 1 (untouched)
            clients = [SSE(urls if i < 80 else urls[1:], n) for i in range(nclients)]

            async def main():
                http = shared_client()  # closed by finish()
                tasks = [asyncio.create_task(c.run(http)) for c in clients]
                await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in clients)), 20)
                async with httpx.AsyncClient(timeout=10) as pub:
                    for k in range(n):
                        if k == kill_at:
                            cl.edge_procs[0].proc.kill()  # SIGKILL
                            cl.edge_procs[0].proc.wait()
                        await publish(pub, cl.publish_url, [item(k)])
                await finish(tasks, clients, http=http)

            asyncio.run(main())
    assert_exact(clients, n)
    assert all(c.connects == 2 for c in clients[:80]), [
        c.errors for c in clients if c.connects != 2
    ]
    assert all(c.connects == 1 for c in clients[80:])


# -- broker restart on Redis in the middle of a run ---------------------------------------------


@pytest.mark.skipif(not redis_available(), reason=MISSING + "redis-server is not installed")
def test_broker_restart_with_redis_store_loses_nothing(tmp_path):
    n, restart_at = 300, 120
    with RedisServer() as redis, sse_app() as origin:
        with Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            edges=2,
            separate_ports=True,
            store=f"redis://127.0.0.1:{redis.port}/0",
        ) as cl:
            clients = [SSE([cl.url("/sse", i % 2)], n) for i in range(10)]

            async def main():
                http = shared_client()  # closed by finish()
                tasks = [asyncio.create_task(c.run(http)) for c in clients]
                await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in clients)), 20)
                async with httpx.AsyncClient(timeout=10) as pub:
                    for k in range(n):
                        if k == restart_at:
                            await asyncio.to_thread(restart_broker, cl)
                        await publish(pub, cl.publish_url, [item(k)])
                        if k % 10 == 0:
                            await asyncio.sleep(0.01)
                await finish(tasks, clients, http=http)

            asyncio.run(main())
    assert_exact(clients, n)
    assert all(c.connects == 1 for c in clients), "streams stay open across a broker restart"


def restart_broker(cl: Cluster) -> None:
    cl.broker.stop()
    cl.procs.remove(cl.broker)
    cl.broker = Proc(gripcast("broker", "--config", cl.config)).wait_ready()
    cl.procs.insert(0, cl.broker)


@pytest.mark.skipif(not redis_available(), reason=MISSING + "redis-server is not installed")
def test_redis_down_refuses_publishes_clearly_then_recovers(tmp_path):
    with RedisServer() as redis:
        cl = Cluster(tmp_path, [], edges=0, store=f"redis://127.0.0.1:{redis.port}/0")
        with cl:
            ok = httpx.post(cl.publish_url + "/publish", json={"items": [item(0)]}, timeout=10)
            assert ok.status_code == 200
            redis.kill()
            r = httpx.post(cl.publish_url + "/publish", json={"items": [item(1)]}, timeout=10)
            assert r.status_code == 503 and r.text.strip() == "Store unavailable."
            ctx = zmq.Context.instance()
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.setsockopt(zmq.RCVTIMEO, 10_000)
            req.connect(cl.command_uri)
            try:
                req.send(
                    tnetstring.dumps(
                        {
                            b"id": b"1",
                            b"method": b"publish",
                            b"args": {
                                b"items": [
                                    {
                                        b"channel": CH.encode(),
                                        b"formats": {b"http-stream": {b"content": b"x"}},
                                    }
                                ]
                            },
                        }
                    )
                )
                reply = tnetstring.loads(req.recv())
            finally:
                req.close()
            assert reply[b"success"] is False and reply[b"condition"] == b"store-unavailable"
            redis.start()  # same port, empty: the broker reconnects by itself
            deadline = time.monotonic() + 15
            while True:
                r = httpx.post(cl.publish_url + "/publish", json={"items": [item(2)]}, timeout=10)
                if r.status_code == 200:
                    break
                assert r.status_code == 503 and time.monotonic() < deadline
                time.sleep(0.1)


# -- forced PUB/SUB drops --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_bytes", [0, 1024], ids=["frames", "batches"])
def test_pubsub_drops_are_repaired_from_history(tmp_path, batch_bytes):
    # a high-water mark of 2 messages drops most of each burst: one message a frame, or
    # batches of a few frames (edge_pub_batch_bytes; the default's 256 KiB would carry a
    # burst in one message)
    n, burst = 3000, 1000
    mport = two_free_ports()
    with sse_app() as origin:
        with Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            edges=2,
            separate_ports=True,
            edge_pub_sndhwm=2,
            edge_sub_rcvhwm=2,
            edge_pub_batch_bytes=batch_bytes,
            edge_metrics_port=mport,
            history_max_items=10 * n,
        ) as cl:
            clients = [SSE([cl.url("/sse", i % 2)], n) for i in range(4)]

            async def main():
                http = shared_client()  # closed by finish()
                tasks = [asyncio.create_task(c.run(http)) for c in clients]
                await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in clients)), 20)
                async with httpx.AsyncClient(timeout=10) as pub:
                    for k in range(0, n, burst):  # one publish batch = one tight fan-out loop
                        await publish(pub, cl.publish_url, [item(j) for j in range(k, k + burst)])
                await finish(tasks, clients, http=http)

            asyncio.run(main())
            stats = [metrics(mport + i) for i in (0, 1)]
    assert_exact(clients, n)
    assert all(c.connects == 1 for c in clients)
    for st in stats:
        assert st["gripcast_edge_gaps_total"] > 0, "the burst was expected to drop on the link"
        assert st["gripcast_edge_gaps_skipped_total"] == 0


# -- a client that stops reading ---------------------------------------------------------------------


def test_stalled_client_is_cut_off_others_stay_on_time(tmp_path):
    stalled_client_run(tmp_path, resume=False)


def test_stalled_client_completes_after_resuming_with_its_cursor(tmp_path):
    stalled_client_run(tmp_path, resume=True)


def stalled_client_run(tmp_path, resume: bool):
    n, pad, limit = 400, 16000, 64 * 1024
    with sse_app() as origin:
        with Cluster(
            tmp_path, [f"* 127.0.0.1:{origin.port}"], edges=1, client_buffer_bytes=limit
        ) as cl:
            readers = [SSE([cl.url("/sse")], n) for _ in range(5)]
            stalled = socket.socket()
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(("127.0.0.1", cl.edge_ports[0]))
            stalled.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
            published: list[float] = []
            received: list[bytes] = []

            async def main():
                http = shared_client()  # closed by finish()
                tasks = [asyncio.create_task(c.run(http)) for c in readers]
                await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in readers)), 20)
                head = await asyncio.to_thread(read_until, stalled, b": open\n\n")
                assert head.startswith(b"HTTP/1.1 200")
                received.append(head)
                async with httpx.AsyncClient(timeout=10) as pub:
                    for k in range(0, n, 10):
                        await publish(pub, cl.publish_url, [item(j, pad) for j in range(k, k + 10)])
                        published.extend([time.monotonic()] * 10)
                        await asyncio.sleep(0.01)
                await finish(tasks, readers, http=http)

            asyncio.run(main())
            # the stalled client now reads what the kernel kept, up to the cut-off (EOF) ...
            stalled.settimeout(10)
            data = received[0]
            while chunk := stalled.recv(65536):
                data += chunk
            stalled.close()
            assert b"0\r\n\r\n" not in data[-7:], "cut off, not ended cleanly"
            late = SSE([cl.url("/sse")], n)
            # ... parse the chunked body's complete events, then resume with its cursor
            body = dechunk(data.split(b"\r\n\r\n", 1)[1])
            for event in body.split(b"\n\n")[:-1]:
                late._event(event)
            seen = len(late.got)
            assert 0 < seen < n
            assert late.got == list(range(seen))  # what it got before the cut-off is exact
            if resume:
                asyncio.run(asyncio.wait_for(late.run(), 6))
    assert_exact(readers, n)
    # the readers stayed connected all along (a reader that was cut off too would still have
    # got everything, by reconnecting with Last-Event-ID: exactness alone does not show it)
    assert all(c.connects == 1 and not c.errors for c in readers), [
        (c.connects, c.errors) for c in readers
    ]
    if resume:
        assert_exact([late], n)
        assert late.connects == 1  # one reconnect, with Last-Event-ID
    lag = max(t - p for c in readers for t, p in zip(c.times, published))
    assert lag < 2.0, f"a reading client fell {lag:.2f}s behind while another stalled"


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(10)
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def dechunk(raw: bytes) -> bytes:
    """The complete chunks of a chunked body (an incomplete last chunk is left out)."""
    out = []
    while True:
        size_end = raw.find(b"\r\n")
        if size_end < 0:
            break
        size = int(raw[:size_end], 16)
        if size == 0 or len(raw) < size_end + 2 + size + 2:
            break
        out.append(raw[size_end + 2 : size_end + 2 + size])
        raw = raw[size_end + 2 + size + 2 :]
    return b"".join(out)
