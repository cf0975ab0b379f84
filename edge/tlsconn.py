"""A client connection on an HTTPS listener: TLS from the ssl module in memory, on the raw socket.

Theory of operation
-------------------
The HTTP side of the edge (``edge.http1.connection``, ``edge.ws.session``, the delivery path
``edge.sync.deliver``) works on plain non-blocking sockets: the delivery path writes a batch's
bytes for a connection with one ``send()`` on its fd (``_speedups.send_batch``) and the readers
read with one ``read()`` after ``wait_readable``.  A TLS client keeps all of that: its
connection owns a ``TlsConn`` (an ``ssl.SSLObject`` between two ``ssl.MemoryBIO``: the TLS state
machine of the ssl module, never a hand-written layer), and

* **writes** encrypt where the plaintext would have gone out: ``encrypt()`` puts one batch's
  bytes through ``SSLObject.write`` (one encryption per connection per batch: one TLS record,
  or a few past 16 KiB) and takes the records from the outgoing BIO; the ciphertext goes out
  with the same non-blocking send as a plain connection's bytes.  What the socket does not
  take waits in ``out`` (ciphertext, already sequenced: it must leave before anything
  encrypted later) and the session's writer task flushes it, then encrypts the plaintext
  backlog (``buf``) as the socket takes it;
* **reads** wait on the raw socket as before, read the ciphertext with one non-blocking
  ``read()``, feed it to the incoming BIO and return every plaintext byte it completes
  (``read_now``: nothing stays decrypted inside the SSLObject, so ``wait_readable`` on the
  raw socket is always the right wait);
* the **handshake** runs in the connection's own task before the HTTP side starts, bounded by
  ``client_head_timeout_s``; session tickets (TLS 1.3: sent with the handshake's last flight),
  the SNI callback (``edge.tls``) and ALPN work as with any ``SSLObject``.  The bound is not a
  cancel scope per connection (entering and leaving one is ~50 Python calls, ~12 us, on a
  path that costs ~1 ms): ``TlsServer`` keeps every handshake in progress in one dict with
  its deadline, and one sweeper task (``TlsServer.sweep``, run in the edge's nursery; it
  sleeps on an event while no handshake is in progress) ends the overdue ones every
  ``SWEEP_S``: it marks the ``TlsConn`` ``expired`` and wakes its task out of its socket wait
  (``notify_closing``, which does not close the fd: the task's owner closes it, so a reused
  fd number can never be read by the old task).  A task that was runnable rather than
  waiting sees ``expired`` before its next wait.  Without a sweeper running (a caller that
  does not start one), each handshake has its own cancel scope, as before.

No socket pair, no pump task, no extra copy through the kernel: a TLS connection costs its
SSLObject and two BIOs.  The end is ``https_compatible`` (as browsers and web servers): no
``close_notify`` is exchanged; HTTP framing says where a response ends.  Bytes TLS itself must
send after the handshake (an alert, a key update's answer) go out in order with the next write.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from os import read as os_read
from os import write as os_write

import trio

from broker.errors import GripcastError
from edge.fastpath import PeerAddress
from edge.tls import Certificates

log = logging.getLogger(__name__)
wait_readable = trio.lowlevel.wait_readable
wait_writable = trio.lowlevel.wait_writable

READ_BYTES = 64 * 1024  # ciphertext read at once (a few records)
SWEEP_S = 0.25  # how often overdue handshakes are looked for (while any is in progress)
_WantRead = ssl.SSLWantReadError
_ZeroReturn = ssl.SSLZeroReturnError


class TlsConn:
    """One client's TLS state: the SSLObject, its BIOs and the ciphertext not yet sent."""

    __slots__ = ("obj", "inb", "outb", "out", "sock", "fd", "eof", "fed", "expired")

    def __init__(self, sock: trio.socket.SocketType, ctx: ssl.SSLContext) -> None:
        self.inb = ssl.MemoryBIO()
        self.outb = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inb, self.outb, server_side=True)
        self.out = bytearray()  # ciphertext encrypted but not yet taken by the socket
        self.sock = sock
        self.fd = sock.fileno()
        self.eof = False  # the client's side of TCP is closed
        # ciphertext went into the SSLObject since it last wanted more: only then can reading
        # it give plaintext (else ``obj.read`` just raises SSLWantReadError: a Python exception
        # per read for nothing)
        self.fed = False
        self.expired = False  # the handshake's deadline passed (set by TlsServer's sweeper)

    # -- writing -------------------------------------------------------------------------------

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """``data`` as TLS records (one ``SSLObject.write``), after anything TLS queued itself."""
        if data:
            self.obj.write(data)
        return self.outb.read()

    def queue(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` behind what is already waiting in ``out``."""
        self.out += self.encrypt(data)

    def send_out(self) -> int:
        """Write what the socket takes of ``out`` now (one non-blocking write); bytes written.
        ``OSError`` (reset, broken pipe) propagates."""
        out = self.out
        if not out:
            return 0
        try:
            n = os_write(self.fd, out)
        except (BlockingIOError, InterruptedError):
            return 0
        del out[:n]
        return n

    async def flush(self) -> None:
        """Until ``out`` is empty (the caller bounds the time)."""
        while self.out:
            if not self.send_out():
                await wait_writable(self.sock)

    # -- reading -------------------------------------------------------------------------------

    def read_now(self, size: int = READ_BYTES) -> bytes | None:
        """The plaintext the client's bytes complete now: ``b""`` at EOF (TCP end or
        ``close_notify``), None when nothing is complete yet.  ``ssl.SSLError`` (an ``OSError``)
        for bad records or a refused renegotiation."""
        if self.fed:
            data = self._decrypted()
            if data:
                return data
        if self.eof:
            return b""
        try:
            raw = os_read(self.fd, size)
        except (BlockingIOError, InterruptedError):
            return None
        if not raw:
            self.eof = True
            return b""
        self.inb.write(raw)
        self.fed = True
        try:
            data = self._decrypted()
        finally:
            if self.outb.pending:  # what TLS answers (an alert, a key update): out in order
                self.out += self.outb.read()
                self.send_out()
        return b"" if data is None else (data or None)

    def _decrypted(self) -> bytes | None:
        """All the plaintext the incoming BIO completes (``b""``: none; None: the client ended
        TLS with ``close_notify``).  Stops without the SSLObject's SSLWantReadError when
        nothing is left to decrypt: no ciphertext in the incoming BIO, no plaintext in the
        SSLObject (without read-ahead, OpenSSL takes from the BIO only the record it reads)."""
        obj, inb = self.obj, self.inb
        parts = []
        try:
            while True:
                data = obj.read(READ_BYTES)
                if not data:  # close_notify (the ssl module answers b"" rather than raising)
                    raise _ZeroReturn
                parts.append(data)
                if not inb.pending and not obj.pending():
                    self.fed = False
                    break
        except _WantRead:
            self.fed = False
        except _ZeroReturn:
            self.eof = True
            return None if not parts else b"".join(parts)
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def recv(self, size: int = READ_BYTES) -> bytes:
        """Wait for plaintext (``b""`` at EOF)."""
        while True:
            data = self.read_now(size)
            if data is not None:
                return data
            await wait_readable(self.sock)

    # -- the handshake -------------------------------------------------------------------------

    async def handshake(self) -> None:
        """Complete the server side of the handshake (its last flight sent, with the session
        tickets).  ``ssl.SSLError`` for a refused one, ``EOFError`` when the client leaves.

        The client speaks first: each round reads what the socket holds (one non-blocking
        ``read()``; ``wait_readable`` only when nothing is there yet, no trio ``recv`` and its
        two scheduler round trips), feeds it to the SSLObject, and sends what the SSLObject
        answers with one ``write()`` (a whole flight: the ServerHello to the Finished in TLS
        1.3, then nothing until the client's Finished, answered by the session ticket).

        ``HandshakeTimeout`` once ``expired`` is set (``TlsServer``'s sweeper, which also wakes
        a wait here with ``trio.ClosedResourceError``)."""
        obj, inb, outb, fd, sock = self.obj, self.inb, self.outb, self.fd, self.sock
        while True:
            try:
                raw = os_read(fd, READ_BYTES)
            except (BlockingIOError, InterruptedError):
                if self.expired:
                    raise HandshakeTimeout from None
                await wait_readable(sock)
                continue
            if not raw:
                raise EOFError("the client closed during the handshake")
            inb.write(raw)
            try:
                obj.do_handshake()
                break
            except _WantRead:
                if outb.pending:  # a flight to send before the client's next one
                    self.out += outb.read()
                    await self._flush_handshake()
            except ssl.SSLError:
                self.out += outb.read()  # the alert, best effort
                self.send_out()
                raise
        # the client's first records may have come with its last handshake flight
        self.fed = inb.pending > 0
        if outb.pending:
            self.out += outb.read()
            await self._flush_handshake()

    async def _flush_handshake(self) -> None:
        """``flush`` bounded by the handshake's deadline."""
        while self.out:
            if not self.send_out():
                if self.expired:
                    raise HandshakeTimeout
                await wait_writable(self.sock)


class HandshakeTimeout(GripcastError):
    """A handshake still in progress at its deadline (``TlsConn.expired``)."""


# the HTTP side of a TLS connection; True when it parked the connection (edge.parking: still
# open, ``closed()`` is called when it ends)
ServePlain = Callable[[trio.socket.SocketType, PeerAddress | None, TlsConn], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class TlsStatistics:
    handshakes: int  # completed
    failures: int  # not TLS, refused (protocol, ciphers, no certificate), or broken
    timeouts: int  # not complete within client_head_timeout_s
    active: int  # TLS connections open now
    resumed: int  # handshakes that resumed a session (ticket or id)
    reloads: int  # certificate sets installed after the first


class TlsServer:
    """The edge's TLS side: the certificates in use (swapped on SIGHUP), the counters, and
    the handshakes in progress with their deadlines (one sweeper task for all of them)."""

    def __init__(self, certs: Certificates) -> None:
        self.certs = certs
        self.handshakes = self.failures = self.timeouts = self.active = 0
        self.resumed = self.reloads = 0
        # every handshake in progress -> its deadline (trio clock); the sweeper scans it
        self._shaking: dict[TlsConn, float] = {}
        self._sweeping = False  # a sweep() task is running
        self._wake: trio.Event | None = None  # set: a handshake began while none was in

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
    ) -> None:
        """Serve one accepted TLS client until it is done or parked: the handshake, then
        ``serve_plain(sock, addr, conn)`` (the HTTP side, which closes ``sock``)."""
        self.active += 1
        parked = False
        try:
            conn = await self.handshake(sock, addr, port, handshake_timeout_s)
            if conn is None:
                sock.close()
                return
            parked = await serve_plain(sock, addr, conn)
        except Exception:  # a bug in one connection must not take the edge down
            log.exception("TLS connection failed addr=%s", addr)
            sock.close()
        finally:
            if not parked:
                self.active -= 1

    def closed(self) -> None:
        """A TLS connection that had parked (``serve_connection`` returned) is closed."""
        self.active -= 1

    async def handshake(
        self, sock: trio.socket.SocketType, addr: PeerAddress | None, port: int, timeout_s: float
    ) -> TlsConn | None:
        """The server side of a handshake within ``timeout_s``, counted; None if it failed
        (the caller closes ``sock``)."""
        conn = TlsConn(sock, self.certs.for_port(port))
        if not self._sweeping:  # no sweeper: a cancel scope of its own
            with trio.move_on_after(timeout_s):
                return await self._shake(conn, addr, None)
            conn.expired = True
            self.timeouts += 1
            self.failures += 1
            log.debug("TLS handshake timed out addr=%s after %.1fs", addr, timeout_s)
            return None
        shaking = self._shaking
        if not shaking and self._wake is not None:
            self._wake.set()
        shaking[conn] = trio.current_time() + timeout_s
        return await self._shake(conn, addr, shaking)

    async def _shake(
        self, conn: TlsConn, addr: PeerAddress | None, shaking: dict[TlsConn, float] | None
    ) -> TlsConn | None:
        try:
            await conn.handshake()
        except (HandshakeTimeout, trio.ClosedResourceError):
            if not conn.expired:  # closed under the handshake by someone else (drain)
                self.failures += 1
                return None
            self.timeouts += 1
            self.failures += 1
            log.debug("TLS handshake timed out addr=%s", addr)
            return None
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            self.failures += 1
            log.debug("TLS handshake failed addr=%s: %s", addr, _reason(exc))
            return None
        finally:
            if shaking is not None:
                shaking.pop(conn, None)
        self.handshakes += 1
        if conn.obj.session_reused:
            self.resumed += 1
        return conn

    def expire_due(self, now: float) -> int:
        """End every handshake in progress whose deadline is ``now`` or earlier: mark it
        ``expired`` and wake its wait; how many it ended."""
        shaking = self._shaking
        due = [conn for conn, deadline in shaking.items() if deadline <= now]
        for conn in due:
            del shaking[conn]
            conn.expired = True
            try:
                trio.lowlevel.notify_closing(conn.sock)  # the wait raises; the fd stays open
            except (OSError, ValueError):  # already closed
                pass
        return len(due)

    async def sweep(self) -> None:
        """Bound every handshake in progress, for as long as it runs (the edge starts it in
        its nursery beside the listeners): every ``SWEEP_S`` while handshakes are in
        progress, end the overdue ones; asleep on an event while none is.  When it ends
        (the edge stops), the handshakes still in progress end with it."""
        self._sweeping = True
        try:
            while True:
                if not self._shaking:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    self._wake = None
                await trio.sleep(SWEEP_S)
                try:
                    self.expire_due(trio.current_time())
                except Exception:  # a bug here must not take the edge down
                    log.exception("TLS handshake deadline sweep failed")
        finally:
            self._sweeping = False
            self._wake = None
            self.expire_due(float("inf"))  # nothing bounds them any more


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) or type(exc).__name__
