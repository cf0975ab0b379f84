"""The broker process: composition root, and the only module of ``broker`` that touches sockets.

``main(cfg)`` runs ``serve_broker(cfg)`` under trio and returns the exit status.  The broker
binds (see the wiring table in ``broker.config``)::

    push_in   PULL    publishers' PUSH: one frame per item (J/T/bare tnetstring)
    sub_in    SUB     publishers' PUB/XPUB: [channel, item]; subscribed to the live channels
    command   ROUTER  publishers' REQ/DEALER: get-zmq-uris, publish, recover (tnetstring ZRPC)
    edge_pub  XPUB    edges' SUB: fan-out frames, position markers, heartbeats
    edge_ctl  ROUTER  edges' DEALER: hello, position, replay (msgpack)
    http_api  HTTP    POST /publish, POST /recover, GET / (Pushpin's publish API)

Every input feeds the same pipeline, one batch at a time and under one lock so that seq order
is release order: parse -> ``Sequencer`` (dedupe, reorder) -> ``Store.append_batch`` (seq,
epoch, history) -> fan-out of the envelopes whose channel is live on ``edge_pub``.

ZeroMQ under trio (DESIGN.md, "trio and ZeroMQ"): sockets are drained with NOBLOCK until
``zmq.Again``, a reader parks on ``trio.lowlevel.wait_readable(FD)`` only after ``EVENTS``
says nothing is readable, and every send on a socket pokes that socket's parked reader, since
the send can consume the edge-triggered FD's edge.
"""
from __future__ import annotations

import logging
import secrets
import signal
import time
from dataclasses import dataclass
from typing import Any, Sequence

import httptools
import trio
import zmq

from broker import commands, control, httpapi, wire
from broker.config import Config
from broker.errors import PublishError, RemoteProtocolError, StoreUnavailable
from broker.history import MemoryHistory
from broker.items import Item, parse_sub_item, parse_zmq_item
from broker.sdnotify import notify
from broker.sequencer import Sequencer, SequencerStatistics
from broker.store import MemoryStore, Store

log = logging.getLogger(__name__)

BATCH_MAX = 1000  # messages drained from one socket before processing them
PUBLISH_IN_HWM = 101_000  # Pushpin's DEFAULT_HWM for its publish inputs
EDGE_PUB_SNDHWM = 100_000  # per edge; beyond it PUB drops and the edge repairs the gap
SEQUENCER_POLL_S = 1.0  # Pushpin checks reorder timeouts every second
HTTP_REQUEST_TIMEOUT_S = 30.0
HTTP_READ_BYTES = 65536
HTTP_LINGER_S = 1.0  # draining unread request bytes after an early error answer


# -- ZeroMQ under trio ---------------------------------------------------------------------------


class ZSocket:
    """A non-blocking ZeroMQ socket with one trio reader task (see the module docstring)."""

    def __init__(self, sock: zmq.Socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.fd: int = sock.getsockopt(zmq.FD)
        self._parked: trio.CancelScope | None = None
        self.send_dropped = 0

    def recv_batch(self, limit: int = BATCH_MAX) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        recv = self.sock.recv_multipart
        try:
            while len(out) < limit:
                out.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        return out

    def send(self, frames: Sequence[bytes]) -> bool:
        """Send without blocking; False (and counted) if the socket would block."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.send_dropped += 1
            return False

    def send_frame(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.send_dropped += 1
            return False

    def poke(self) -> None:
        """Wake this socket's parked reader so it re-checks EVENTS (after a send or setsockopt)."""
        if self._parked is not None:
            self._parked.cancel()

    async def wait_readable(self) -> None:
        while not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            with trio.CancelScope() as scope:
                self._parked = scope
                try:
                    await trio.lowlevel.wait_readable(self.fd)
                finally:
                    self._parked = None

    def close(self) -> None:
        try:
            trio.lowlevel.notify_closing(self.fd)
        except RuntimeError:  # outside trio
            pass
        self.sock.close(linger=0)


# -- the broker ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    broker_id: str
    started: float
    live_channels: int
    received: dict
    rejected: int
    published: int
    fanned_out: int
    fanout_dropped: int
    markers: int
    control_requests: int
    store_failures: int
    sequencer: SequencerStatistics
    store: Any


class Broker:
    """Wires the sequencer, the store and the sockets; ``serve`` runs every task."""

    def __init__(self, cfg: Config, store: Store | None = None) -> None:
        self.cfg = cfg
        self.store: Store = store or MemoryStore(
            MemoryHistory(max_items=cfg.history_max_items, max_age_s=cfg.history_max_age_s)
        )
        self.sequencer = Sequencer()
        self.broker_id = secrets.token_hex(8)
        self.started = time.time()
        self.live: set[str] = set()
        self.uris = {
            "command": cfg.endpoint("command", bind=True),
            "publish-pull": cfg.endpoint("push_in", bind=True),
            "publish-sub": cfg.endpoint("sub_in", bind=True),
        }
        self._ctx: zmq.Context | None = None
        self._sockets: list[ZSocket] = []
        self._lock: trio.Lock | None = None
        self._listeners: list[trio.SocketListener] = []
        self._received = {"pull": 0, "sub": 0, "http": 0, "command": 0}
        self._rejected = 0
        self._published = 0
        self._fanned_out = 0
        self._markers = 0
        self._control_requests = 0
        self._store_failures = 0

    # -- sockets --------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create and bind every ZeroMQ socket (raises zmq.ZMQError, e.g. address in use)."""
        self._ctx = zmq.Context()
        try:
            self.push_in = self._socket(zmq.PULL, "push_in", {zmq.RCVHWM: PUBLISH_IN_HWM})
            self.sub_in = self._socket(
                zmq.SUB, "sub_in", {zmq.RCVHWM: PUBLISH_IN_HWM, zmq.SNDHWM: 0}
            )
            self.command = self._socket(zmq.ROUTER, "command", {})
            self.edge_pub = self._socket(
                zmq.XPUB,
                "edge_pub",
                {zmq.XPUB_VERBOSE: 1, zmq.RCVHWM: 0, zmq.SNDHWM: EDGE_PUB_SNDHWM},
            )
            self.edge_ctl = self._socket(zmq.ROUTER, "edge_ctl", {})
        except BaseException:
            self.close()
            raise

    def _socket(self, kind: int, name: str, opts: dict) -> ZSocket:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in opts.items():
            sock.setsockopt(opt, value)
        z = ZSocket(sock, name)
        self._sockets.append(z)
        sock.bind(self.cfg.endpoint(name, bind=True))
        return z

    def close(self) -> None:
        for z in self._sockets:
            z.close()
        self._sockets.clear()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- the pipeline -----------------------------------------------------------------------------

    async def publish(self, items: Sequence[Item]) -> None:
        """Sequence, retain and fan out ``items`` (one batch).

        Raises ``StoreUnavailable`` when the store cannot take the batch (logged and counted
        here; the released items are lost and their ids forgotten by the dedupe cache, so the
        HTTP API answers 503 and the publisher may retry).
        """
        assert self._lock is not None
        async with self._lock:
            released = self.sequencer.add_many(list(items), trio.current_time())
            await self._commit(released)

    async def _ingest(self, items: Sequence[Item]) -> None:
        """``publish`` for inputs that cannot answer (PULL, SUB, commands)."""
        try:
            await self.publish(items)
        except StoreUnavailable:
            pass  # logged by _commit

    async def _poll_sequencer(self) -> None:
        assert self._lock is not None
        async with self._lock:
            released = self.sequencer.poll(trio.current_time())
            for item in released:
                log.debug("sequencer released after wait channel=%s id=%s", item.channel, item.id)
            try:
                await self._commit(released)
            except StoreUnavailable:
                pass  # logged by _commit

    async def _commit(self, released: list[Item]) -> None:
        if not released:
            return
        try:
            envelopes = await self.store.append_batch(released, time.time())
        except StoreUnavailable as exc:
            self.sequencer.forget_ids(released)
            self._store_failures += len(released)
            log.error("store unavailable, batch lost items=%d error=%s", len(released), exc)
            raise
        self._published += len(envelopes)
        live = self.live
        send = self.edge_pub.send_frame
        sent = 0
        for env in envelopes:
            if env.channel in live:
                if send(wire.encode_envelope(env)):
                    sent += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "publish channel=%s seq=%d id=%s live=%s",
                    env.channel, env.seq, env.id, env.channel in live,
                )
        self._fanned_out += sent
        if sent:
            self.edge_pub.poke()

    def _reject(self, source: str, reason: str) -> None:
        self._rejected += 1
        log.warning("rejected publish source=%s reason=%r", source, reason)

    # -- tasks ------------------------------------------------------------------------------------

    async def _serve_pull(self) -> None:
        z = self.push_in
        while True:
            await z.wait_readable()
            items: list[Item] = []
            for frames in z.recv_batch():
                self._received["pull"] += 1
                if len(frames) != 1:
                    self._reject("pull", "received message with parts != 1")
                    continue
                try:
                    items.append(parse_zmq_item(frames[0]))
                except PublishError as exc:
                    self._reject("pull", exc.reason)
            if items:
                await self._ingest(items)
            else:
                await trio.lowlevel.checkpoint()

    async def _serve_sub(self) -> None:
        z = self.sub_in
        while True:
            await z.wait_readable()
            items: list[Item] = []
            for frames in z.recv_batch():
                self._received["sub"] += 1
                if len(frames) != 2:
                    self._reject("sub", "received message with parts != 2")
                    continue
                try:
                    items.append(parse_sub_item(frames[0], frames[1]))
                except PublishError as exc:
                    self._reject("sub", exc.reason)
            if items:
                await self._ingest(items)
            else:
                await trio.lowlevel.checkpoint()

    async def _serve_command(self) -> None:
        z = self.command
        while True:
            await z.wait_readable()
            items: list[Item] = []
            for frames in z.recv_batch():
                self._received["command"] += 1
                try:
                    prefix, payload = commands.split_envelope(frames)
                except RemoteProtocolError as exc:
                    self._reject("command", exc.reason)
                    continue
                result = commands.handle_command(payload, self.uris)
                if result.error:
                    self._reject("command", f"method={result.method or '?'} {result.error}")
                if result.recover:
                    log.info("recover command: forgetting remembered last ids")
                    self.sequencer.recover()
                items.extend(result.items)
                if result.reply is not None:
                    z.send(prefix + [result.reply])
            if items:
                await self._ingest(items)
            else:
                await trio.lowlevel.checkpoint()

    async def _serve_edge_pub(self) -> None:
        """Track live channels from XPUB notices; answer each subscribe with a marker."""
        z = self.edge_pub
        assert self._lock is not None
        while True:
            await z.wait_readable()
            batch = z.recv_batch()
            async with self._lock:
                for frames in batch:
                    notice = wire.subscription_notice(frames[0]) if frames else None
                    if notice is None:
                        continue
                    subscribed, channel = notice
                    if subscribed:
                        await self._subscribed(channel)
                    elif channel in self.live:
                        self.live.discard(channel)
                        self.sub_in.sock.setsockopt(zmq.UNSUBSCRIBE, channel.encode("utf-8"))
                        self.sub_in.poke()
                        log.debug("channel dead channel=%s", channel)

    async def _subscribed(self, channel: str) -> None:
        if channel not in self.live:
            self.live.add(channel)
            self.sub_in.sock.setsockopt(zmq.SUBSCRIBE, channel.encode("utf-8"))
            self.sub_in.poke()
            log.debug("channel live channel=%s", channel)
        try:
            pos = await self.store.position(channel)
        except StoreUnavailable as exc:
            log.error("store unavailable, no marker channel=%s error=%s", channel, exc)
            return
        if self.edge_pub.send_frame(wire.encode_marker(channel, pos.epoch, pos.last_seq)):
            self._markers += 1

    async def _serve_edge_ctl(self) -> None:
        z = self.edge_ctl
        while True:
            await z.wait_readable()
            for frames in z.recv_batch():
                if len(frames) < 2:
                    continue
                self._control_requests += 1
                reply = await self._control(frames[-1])
                z.send(frames[:-1] + [reply])
            await trio.lowlevel.checkpoint()

    async def _control(self, payload: bytes) -> bytes:
        try:
            req = control.parse_control(payload)
        except control.ControlError as exc:
            log.warning("bad control request reason=%r", exc.reason)
            return control.error_reply(exc.rid, exc.reason)
        if req.op == "hello":
            return control.hello_reply(req.rid, self.broker_id, self.started)
        try:
            if req.op == "position":
                pos = await self.store.position(req.channel)
                return control.position_reply(req.rid, req.channel, pos)
            rep = await self.store.replay(
                req.channel, req.epoch, req.after_seq, req.after_id, req.limit, time.time()
            )
        except StoreUnavailable as exc:
            log.error("store unavailable op=%s channel=%s error=%s", req.op, req.channel, exc)
            return control.error_reply(req.rid, "store unavailable")
        return control.replay_reply(req.rid, req.channel, rep)

    async def _serve_heartbeat(self) -> None:
        while True:
            self.edge_pub.send_frame(wire.encode_heartbeat(self.broker_id, self.started, time.time()))
            self.edge_pub.poke()
            await trio.sleep(wire.HEARTBEAT_INTERVAL_S)

    async def _serve_sequencer_timer(self) -> None:
        while True:
            await trio.sleep(SEQUENCER_POLL_S)
            await self._poll_sequencer()

    # -- HTTP API ---------------------------------------------------------------------------------

    async def serve_http_connection(self, stream: trio.SocketStream) -> None:
        """One request, one response, then close (Pushpin's SimpleHttpServer)."""
        try:
            with trio.move_on_after(HTTP_REQUEST_TIMEOUT_S):
                await self._http_exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # a bug must not take the API down; log it with the traceback
            log.exception("http api: unexpected error")
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    async def _http_exchange(self, stream: trio.SocketStream) -> None:
        req = _HttpRequest()
        parser = httptools.HttpRequestParser(req)
        head = bytearray()
        while not req.headers_done:
            data = await stream.receive_some(HTTP_READ_BYTES)
            if not data:
                return
            head += data
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                req.complete = True  # no upgrades here: answer the request as it stands
            except httptools.HttpParserError:
                await _answer_early(stream, httpapi.bad_header().to_bytes())
                return
            if not req.headers_done and len(head) >= httpapi.MAX_HEADER_BYTES:
                await _answer_early(stream, httpapi.header_too_large().to_bytes())
                return
        end = head.find(b"\r\n\r\n")
        if (end + 4 if end >= 0 else len(head)) > httpapi.MAX_HEADER_BYTES:
            await _answer_early(stream, httpapi.header_too_large().to_bytes())
            return
        method = parser.get_method().decode("latin-1")
        version = parser.get_http_version()
        check = httpapi.check_head(method, req.headers)
        if check.response is not None:
            await _answer_early(stream, check.response.to_bytes(version))
            return
        if check.expect_continue and not req.complete:
            await stream.send_all(f"HTTP/{version} 100 Continue\r\n\r\n".encode())
        while not req.complete:
            data = await stream.receive_some(HTTP_READ_BYTES)
            if not data:
                return
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                await _answer_early(stream, httpapi.bad_header().to_bytes(version))
                return
        self._received["http"] += 1
        body = b"".join(req.body)
        result = httpapi.handle_request(method, req.url.decode("latin-1"), req.headers, body)
        if result.error:
            self._reject("http", result.error)
        response = result.response
        if result.items:
            try:
                await self.publish(result.items)
            except StoreUnavailable:
                response = httpapi.respond(503, "Store unavailable.\n")
        if result.recover:
            log.info("recover request: forgetting remembered last ids")
            self.sequencer.recover()
        log.debug(
            "http api method=%s path=%s code=%d items=%d",
            method, req.url.decode("latin-1"), response.status, len(result.items),
        )
        await stream.send_all(response.to_bytes(version))

    # -- running ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Bind every socket and the HTTP listener (raises zmq.ZMQError or OSError)."""
        self._lock = trio.Lock()
        self.bind()
        try:
            host = self.cfg.broker_bind or None
            self._listeners = await trio.open_tcp_listeners(self.cfg.port("http_port"), host=host)
        except BaseException:
            self.close()
            raise

    async def serve(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run every task until cancelled (opening first if needed); sockets closed on exit."""
        if self._lock is None:
            await self.open()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    trio.serve_listeners, self.serve_http_connection, self._listeners
                )
                for task in (
                    self._serve_pull,
                    self._serve_sub,
                    self._serve_command,
                    self._serve_edge_pub,
                    self._serve_edge_ctl,
                    self._serve_heartbeat,
                    self._serve_sequencer_timer,
                ):
                    nursery.start_soon(task, name=f"broker.{task.__name__.lstrip('_')}")
                notify(f"READY=1\nSTATUS=broker {self.broker_id} ready")
                log.info(
                    "broker ready broker_id=%s store=%s http=%s:%d push_in=%s sub_in=%s "
                    "command=%s edge_pub=%s edge_ctl=%s",
                    self.broker_id, self.store.name, self.cfg.broker_bind,
                    self.cfg.port("http_port"),
                    *(self.cfg.endpoint(n, bind=True)
                      for n in ("push_in", "sub_in", "command", "edge_pub", "edge_ctl")),
                )
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.aclose()
                self.close()
                await self.store.aclose()

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            broker_id=self.broker_id,
            started=self.started,
            live_channels=len(self.live),
            received=dict(self._received),
            rejected=self._rejected,
            published=self._published,
            fanned_out=self._fanned_out,
            fanout_dropped=self.edge_pub.send_dropped if hasattr(self, "edge_pub") else 0,
            markers=self._markers,
            control_requests=self._control_requests,
            store_failures=self._store_failures,
            sequencer=self.sequencer.statistics(),
            store=self.store.statistics(),
        )


async def _answer_early(stream: trio.SocketStream, response: bytes) -> None:
    """Answer before the request was read in full, then drain what the client still sends
    (briefly), so that closing with unread input does not reset the connection and lose the
    answer."""
    await stream.send_all(response)
    with trio.move_on_after(HTTP_LINGER_S):
        await stream.send_eof()
        drained = 0
        while drained < httpapi.MAX_BODY_BYTES:
            data = await stream.receive_some(HTTP_READ_BYTES)
            if not data:
                break
            drained += len(data)


class _HttpRequest:
    """httptools callbacks for one request."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


# -- process entry -------------------------------------------------------------------------------


async def serve_broker(cfg: Config) -> None:
    """Run the broker until SIGTERM or SIGINT, then stop cleanly."""
    broker = Broker(cfg)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        await broker.open()  # outside the nursery: bind errors propagate as they are
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.serve)
            async for signum in signals:
                log.info("broker stopping signal=%s", signal.Signals(signum).name)
                notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


def _configure_logging(level: str) -> None:
    """Log to stderr at ``level`` unless the caller (the CLI) configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def main(cfg: Config) -> int:
    """Run the broker process; 0 after a clean stop, 1 if it could not start or crashed."""
    _configure_logging(cfg.log_level)
    try:
        trio.run(serve_broker, cfg)
    except zmq.ZMQError as exc:
        log.error("broker failed: zmq error=%s", exc)
        return 1
    except OSError as exc:
        log.error("broker failed: %s", exc)
        return 1
    except Exception:
        log.exception("broker crashed")
        return 1
    return 0
