"""A client connection on an HTTPS listener: the handshake, then plaintext through a socket pair.

Theory of operation
-------------------
The HTTP side of the edge (``edge.http1.connection``, ``edge.ws.session``, the delivery path
``edge.sync.deliver``) works on plain non-blocking sockets: it writes a batch's bytes for a
connection with one ``send()`` on its fd (``_speedups.send_batch``) and reads with ``read()``
after ``wait_readable``.  Those raw fast paths must never touch a TLS socket.  So a TLS client
gets a local ``socketpair``: the HTTP side serves the *inner* end exactly as a plain client's
socket (every feature, limit and timeout as over HTTP, by construction), and this module pumps
between the *outer* end and the client's ``trio.SSLStream`` (TLS from the ssl module, never
hand-written):

* client -> edge: ``receive_some`` (decrypt) then a write to the pair;
* edge -> client: one read of everything the pair holds (up to ``PUMP_BYTES``) then one
  ``send_all`` through the SSLStream: what the delivery path wrote for a connection in one batch
  is read back in one piece, so it is **encrypted once per connection per batch** (one TLS
  record, or a few for more than 16 KB), as the issue asks.

Backpressure carries through: a TLS client that stops reading stalls ``send_all``, the pair's
buffer fills, and the HTTP side sees a full socket as for a plain client (deliveries buffer in
the session up to ``client_buffer_bytes``, then the slow-consumer cut-off; response writes time
out after ``client_write_timeout_s``).  Either side ending ends the other: the HTTP side closing
its end (once what it wrote is flushed) closes the TCP connection (``https_compatible``: as
browsers and web servers, no ``close_notify`` exchange); the client closing (or breaking
TLS) half-closes the pair so the HTTP side reads EOF; the drain's read shutdown works on the
inner end as on a plain socket.

The handshake must finish within ``client_head_timeout_s`` (a client that stalls in it, or
sends something that is not TLS, is closed, counted as a failure and logged at DEBUG): only
then is the pair made and the connection counted as an HTTP connection.
"""

from __future__ import annotations

import logging
import socket as stdsocket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from os import read as os_read

import trio

from edge.fastpath import PeerAddress
from edge.tls import Certificates

log = logging.getLogger(__name__)
wait_readable = trio.lowlevel.wait_readable

PUMP_BYTES = 256 * 1024  # one read of the pair: a delivery batch for one connection
# the pair's edge -> client buffer: a plain client's TCP send buffer grows to MBs (tcp_wmem),
# while a unix socket's stays at wmem_default (208 KiB): one burst of large messages would
# overflow it before the pump runs, and cut a reading TLS client off as a slow consumer that a
# plain one would not be.  The kernel doubles it and caps it at wmem_max; memory is used only
# while bytes wait in it.
PAIR_SNDBUF = 1 << 20
CLOSE_S = 1.0  # closing the client's socket (shielded from the edge's cancellation)

ServePlain = Callable[[trio.socket.SocketType, PeerAddress | None, bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TlsStatistics:
    handshakes: int  # completed
    failures: int  # not TLS, refused (protocol, ciphers, no certificate), or broken
    timeouts: int  # not complete within client_head_timeout_s
    active: int  # TLS connections open now
    resumed: int  # handshakes that resumed a session (ticket or id)
    reloads: int  # certificate sets installed after the first


class TlsServer:
    """The edge's TLS side: the certificates in use (swapped on SIGHUP) and the counters."""

    def __init__(self, certs: Certificates) -> None:
        self.certs = certs
        self.handshakes = self.failures = self.timeouts = self.active = 0
        self.resumed = self.reloads = 0
        # connections past their handshake and not yet closed: the drain waits for these too
        # (what the HTTP side wrote last may still be on its way through the pair)
        self.bridged = 0

    def install(self, certs: Certificates) -> None:
        """New connections use ``certs`` from now on; open ones keep theirs."""
        self.certs = certs
        self.reloads += 1

    def statistics(self) -> TlsStatistics:
        return TlsStatistics(
            self.handshakes, self.failures, self.timeouts, self.active, self.resumed, self.reloads
        )

    async def serve_connection(
        self,
        sock: trio.socket.SocketType,
        addr: PeerAddress | None,
        port: int,
        serve_plain: ServePlain,
        *,
        handshake_timeout_s: float,
        write_timeout_s: float,
    ) -> None:
        """Serve one accepted TLS client until it is done; ``serve_plain(inner, addr, True)``
        runs the HTTP side on the inner end of the pair.  Once the HTTP side is done, what it
        wrote last is flushed to the client for at most ``write_timeout_s``."""
        self.active += 1
        stream = trio.SSLStream(
            trio.SocketStream(sock),
            self.certs.for_port(port),
            server_side=True,
            # as browsers and servers do: a missing close_notify is not an error, and none is
            # exchanged at the end (HTTP framing, not TLS EOF, says where a response ends)
            https_compatible=True,
        )
        try:
            if not await self._handshake(stream, addr, handshake_timeout_s):
                return
            self.bridged += 1
            try:
                await self._bridge(stream, addr, serve_plain, write_timeout_s)
            finally:
                self.bridged -= 1
        except Exception:  # a bug in one connection must not take the edge down
            log.exception("TLS connection failed addr=%s", addr)
        finally:
            self.active -= 1
            with trio.move_on_after(CLOSE_S) as scope:
                scope.shield = True
                await stream.aclose()  # closes the client's socket

    async def _bridge(
        self,
        stream: trio.SSLStream[trio.SocketStream],
        addr: PeerAddress | None,
        serve_plain: ServePlain,
        write_timeout_s: float,
    ) -> None:
        """The socket pair and its two pumps, until the HTTP side is done and flushed."""
        inner, outer = trio.socket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        inner.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, PAIR_SNDBUF)
        flushed = trio.Event()
        with outer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_to_client, stream, outer, nursery.cancel_scope, flushed)
                nursery.start_soon(_from_client, stream, outer)
                # the HTTP side owns (and closes) ``inner``; while it lingers (reading what a
                # refused client still sends) the client's bytes keep flowing to it
                await serve_plain(inner, addr, True)
                with trio.move_on_after(write_timeout_s):
                    await flushed.wait()
                nursery.cancel_scope.cancel()

    async def _handshake(
        self, stream: trio.SSLStream[trio.SocketStream], addr: PeerAddress | None, timeout_s: float
    ) -> bool:
        with trio.move_on_after(timeout_s):
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.failures += 1
                log.debug("TLS handshake failed addr=%s: %s", addr, _reason(exc))
                return False
            self.handshakes += 1
            if stream.session_reused:  # forwarded from the SSLObject by trio's SSLStream
                self.resumed += 1
            return True
        self.timeouts += 1
        self.failures += 1
        log.debug("TLS handshake timed out addr=%s after %.1fs", addr, timeout_s)
        return False


async def _to_client(
    stream: trio.SSLStream[trio.SocketStream],
    outer: trio.socket.SocketType,
    scope: trio.CancelScope,
    flushed: trio.Event,
) -> None:
    """Edge -> client: what the pair holds, one ``send_all`` (one encryption) per read.

    The pair is read after ``wait_readable`` with one plain ``read`` (as ``watch_client`` does):
    no trio ``recv`` round trip per delivery batch."""
    fd = outer.fileno()
    try:
        while True:
            await wait_readable(outer)
            try:
                data = os_read(fd, PUMP_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:  # the HTTP side is done writing: all of it is out
                flushed.set()
                return
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("TLS connection ended (send): %s", _reason(exc))
    scope.cancel()  # the client is gone: end the HTTP side and the reader now


async def _from_client(
    stream: trio.SSLStream[trio.SocketStream], outer: trio.socket.SocketType
) -> None:
    """Client -> edge: decrypted bytes into the pair; EOF or a broken TLS stream half-closes it."""
    try:
        while True:
            data = await stream.receive_some(PUMP_BYTES)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = await outer.send(view)
                view = view[n:]
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        # garbage, a refused renegotiation, a reset: this connection only
        log.debug("TLS connection ended (receive): %s", _reason(exc))
    try:
        outer.shutdown(stdsocket.SHUT_WR)  # the HTTP side reads EOF, as from a plain client
    except OSError:
        pass


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause or exc) or type(exc).__name__
