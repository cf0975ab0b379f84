"""A publish served in the publish API's accept loop (``HttpApi._inline``): only a small
``POST /publish`` already whole in the socket, on the memory store with the pipeline free; the
bytes read ahead stay for whichever handler serves the connection.  ``http1.whole_request``
decides "whole" as ``RequestReader`` would read it.  Socket pairs and a real listener on
127.0.0.1; the pipeline is the real one over inproc ZeroMQ sockets."""

from __future__ import annotations

import json
import socket
import time

import pytest
import trio
import trio.testing
import zmq

from broker.config import Config
from broker.history import MemoryHistory
from broker.ingest.auth import PublishAuth
from broker.ingest.httpapi import INLINE_MAX_BYTES, MAX_HEADER_BYTES, HttpApi
from broker.ingest.pipeline import Pipeline, PipelineSockets
from broker.runtime import http1
from broker.runtime.rawsock import RawStream
from broker.runtime.zmqtrio import ZSocket
from broker.store.memory import MemoryStore


def publish_request(n_items: int = 1, extra_headers: bytes = b"") -> bytes:
    items = [
        {"channel": f"c{k}", "formats": {"http-stream": {"content": "m\n"}}} for k in range(n_items)
    ]
    body = json.dumps({"items": items}).encode()
    return (
        b"POST /publish/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra_headers
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


# -- whole_request -------------------------------------------------------------------------------


def test_whole_request_reads_a_complete_request():
    data = publish_request()
    request = http1.whole_request(data, MAX_HEADER_BYTES)
    assert request is not None
    head, body = request
    assert (head.method, head.url, head.version) == ("POST", "/publish/", "1.1")
    assert data.endswith(b"\r\n\r\n" + body) and json.loads(body)["items"]
    assert (b"Content-Type", b"application/json") in head.headers
    get = http1.whole_request(b"GET /status HTTP/1.0\r\n\r\n", MAX_HEADER_BYTES)
    assert get is not None and get[0].version == "1.0" and get[1] == b""


@pytest.mark.parametrize(
    "data",
    [
        publish_request()[:30],  # the head not whole
        publish_request()[:-3],  # the body not whole
        publish_request() + b"GET / HTTP/1.1\r\n\r\n",  # a second request after it
        b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["head-cut", "body-cut", "pipelined", "chunked", "upgrade", "garbage"],
)
def test_whole_request_refuses_anything_else(data):
    assert http1.whole_request(data, MAX_HEADER_BYTES) is None


def test_whole_request_honours_the_head_limit():
    data = publish_request(extra_headers=b"X-Pad: " + b"a" * 200 + b"\r\n")
    assert http1.whole_request(data, 100) is None
    assert http1.whole_request(data, MAX_HEADER_BYTES) is not None


# -- RawStream.read_ahead --------------------------------------------------------------------------


def test_read_ahead_keeps_the_bytes_for_receive_some():
    a, b = socket.socketpair()
    try:
        stream = RawStream(a)
        assert stream.read_ahead(100) == b""  # nothing yet: no wait, nothing kept
        b.sendall(b"hello")
        assert stream.read_ahead(100) == b"hello"
        b.sendall(b" world")

        async def read() -> list[bytes]:
            return [await stream.receive_some(100), await stream.receive_some(100)]

        assert trio.run(read) == [b"hello", b" world"]
    finally:
        a.close()
        b.close()


# -- HttpApi._inline, and the whole path through a real listener ---------------------------------


class Setup:
    """A real pipeline (memory store, inproc ZeroMQ fan-out) and its HttpApi."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.bind(f"inproc://inline-{id(self)}")
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self.pipeline = Pipeline(
            Config(),
            MemoryStore(MemoryHistory(max_items=100)),
            PipelineSockets(None, None, ZSocket(self.xpub, "edge_pub"), None),  # type: ignore[arg-type]
            broker_id="t",
            started=time.time(),
            uris={},
            stats=None,
        )
        self.api = HttpApi(Config(), self.pipeline, PublishAuth(None))

    def close(self) -> None:
        self.xpub.close(linger=0)
        self.ctx.term()


@pytest.fixture
def setup():
    s = Setup()
    yield s
    s.close()


def decide(api: HttpApi, data: bytes) -> tuple[bool, bytes]:
    """``_inline`` on a connection holding ``data``: (its answer, what stays read ahead)."""
    a, b = socket.socketpair()
    try:
        if data:
            b.sendall(data)
        stream = RawStream(a)
        request = api._inline(stream)  # served inline: the request, read (nothing kept)
        return request is not None, stream.pending if request is None else data
    finally:
        a.close()
        b.close()


def test_inline_only_for_a_whole_small_publish(setup):
    api = setup.api
    req = publish_request()
    assert decide(api, req) == (True, req)
    assert decide(api, req[:-2]) == (False, req[:-2])  # not whole: its task reads the rest
    assert decide(api, b"") == (False, b"")  # nothing yet
    assert decide(api, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] is False
    assert decide(api, b"POST /recover HTTP/1.1\r\nContent-Length: 0\r\n\r\n")[0] is False
    assert decide(api, publish_request(extra_headers=b"Expect: 100-continue\r\n"))[0] is False
    big = publish_request(200)
    assert len(big) > INLINE_MAX_BYTES
    assert decide(api, big)[0] is False


def test_not_inline_while_the_pipeline_is_busy_or_the_store_can_wait(setup):
    api = setup.api
    req = publish_request()

    async def with_lock_held() -> bool:
        async with setup.pipeline.lock:
            return decide(api, req)[0]

    assert trio.run(with_lock_held) is False
    api._memory_store = False  # as with a Redis store
    assert decide(api, req)[0] is False


def test_publishes_through_a_listener_inline_and_not(setup):
    """The same answers whichever way a connection is served: a whole publish (inline), one
    whose body comes later (its own task), and a GET."""
    api = setup.api
    answers: dict[str, bytes] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            await nursery.start(api.serve, listeners)

            async def exchange(name: str, parts: list[bytes]) -> None:
                client = await trio.open_tcp_stream("127.0.0.1", port)
                for i, part in enumerate(parts):
                    if i:
                        await trio.sleep(0.05)
                    await client.send_all(part)
                out = b""
                while chunk := await client.receive_some(4096):
                    out += chunk
                answers[name] = out
                await client.aclose()

            req = publish_request()
            await exchange("whole", [req])
            await exchange("split", [req[:40], req[40:]])
            await exchange("get", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
            api.stop_accepting()

    trio.run(main)
    assert answers["whole"] == answers["split"]
    assert answers["whole"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers["whole"].endswith(b"\r\n\r\nPublished\n")
    assert answers["get"].endswith(b"Pushpin API\n")
    assert setup.pipeline.store.history.statistics().appended == 2  # type: ignore[attr-defined]
