"""``edge.tlsconn.TlsConn`` without a network: the server side of a real TLS 1.3 session (the
ssl module's SSLObject over memory BIOs) against a client SSLObject, bytes carried by hand.
What is tested is the in-memory layer the edge's reads and writes go through: one encryption
per batch, every plaintext byte a read completes, ``close_notify`` as EOF."""

from __future__ import annotations

import ssl

import pytest

from edge.tls import server_context
from edge.tlsconn import TlsConn
from tests.tlscerts import make_ca


class _NoSocket:
    """Only a descriptor number: these tests never reach the socket (``fileno`` -1)."""

    def fileno(self) -> int:
        return -1


@pytest.fixture
def session(tmp_path):
    ca = make_ca(tmp_path)
    pair = ca.issue(tmp_path, "server", ["localhost"])
    conn = TlsConn(_NoSocket(), server_context(pair.cert, pair.key))  # type: ignore[arg-type]
    cctx = ssl.create_default_context(cafile=ca.cert_path)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(cin, cout, server_hostname="localhost")
    for _ in range(10):  # the flights, carried by hand
        done = 0
        for side in (client, conn.obj):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        conn.inb.write(cout.read())
        cin.write(conn.outb.read())
        if done == 2:
            break
    assert conn.obj.version() == "TLSv1.3"
    return conn, client, cin, cout


def _client_reads(client: ssl.SSLObject, cin: ssl.MemoryBIO, data: bytes) -> bytes:
    cin.write(data)
    out = b""
    while True:
        try:
            out += client.read(65536)
        except ssl.SSLWantReadError:
            return out


def test_a_batch_is_one_encryption_and_the_client_reads_it_all(session):
    conn, client, cin, cout = session
    _client_reads(client, cin, b"")  # the session tickets
    batch = b"".join(b"message %d\n" % i for i in range(5000))  # ~59 KB: four records
    wire = conn.encrypt(batch)
    assert len(wire) < len(batch) + 4 * 40  # records' overhead only
    assert _client_reads(client, cin, wire) == batch


def test_queue_keeps_order_behind_unsent_ciphertext(session):
    conn, client, cin, cout = session
    _client_reads(client, cin, b"")
    conn.queue(b"first ")
    conn.queue(b"second")
    wire = bytes(conn.out)
    assert _client_reads(client, cin, wire) == b"first second"


def test_a_read_returns_every_plaintext_byte_it_completes(session):
    conn, client, cin, cout = session
    client.write(b"GET / HTTP/1.1\r\n")
    client.write(b"Host: x\r\n\r\n")
    wire = cout.read()
    conn.inb.write(wire[:10])  # part of a record: nothing yet
    assert conn._decrypted() == b""
    conn.inb.write(wire[10:])
    assert conn._decrypted() == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"  # both records at once


def test_close_notify_is_eof_and_stays_eof(session):
    conn, client, cin, cout = session
    client.write(b"last words")
    try:
        client.unwrap()  # sends close_notify
    except ssl.SSLWantReadError:
        pass
    conn.inb.write(cout.read())
    assert conn._decrypted() == b"last words"
    assert conn.eof
    # read_now answers EOF without touching the socket, however often it is asked
    assert conn.read_now() == b""
    assert conn.read_now() == b""


def test_reads_stop_without_want_read_when_nothing_is_left(session):
    conn, client, cin, cout = session
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    wire = cout.read()
    conn.inb.write(wire[:10])  # part of a record
    conn.fed = True
    assert conn._decrypted() == b""
    assert not conn.fed  # OpenSSL wants more: no read until more ciphertext comes
    conn.inb.write(wire[10:])
    conn.fed = True
    # read_now decrypts what was fed without touching the socket (fileno -1 would raise)
    assert conn.read_now() == b"GET / HTTP/1.1\r\n\r\n"
    assert not conn.fed  # the BIO is empty and nothing is decrypted-but-unread: done


def test_a_read_smaller_than_a_record_leaves_the_rest_for_the_next(session):
    conn, client, cin, cout = session
    client.write(b"x" * 100)
    conn.inb.write(cout.read())
    conn.fed = True
    assert conn.read_now(10) == b"x" * 100  # every byte the record completes, at once
    assert not conn.fed


# -- the handshakes' deadlines: one sweeper, no cancel scope per connection ------------------


class _PipeEnd:
    """A non-blocking pipe's read end standing in for the client socket: the handshake reads
    it and waits on it as on a socket (no network, and trio's MockClock drives the time)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


@pytest.fixture
def tls_server(tmp_path):
    from edge.tls import Certificates
    from edge.tlsconn import TlsServer

    ca = make_ca(tmp_path)
    pair = ca.issue(tmp_path, "server", ["localhost"])
    return TlsServer(Certificates({"default": server_context(pair.cert, pair.key)}))


@pytest.fixture
def pipe():
    import os

    r, w = os.pipe2(os.O_NONBLOCK)
    yield r, w
    os.close(r)
    os.close(w)


def test_a_stalled_handshake_ends_at_its_deadline_by_the_sweeper(tls_server, pipe):
    import trio
    import trio.testing

    from edge.tlsconn import SWEEP_S

    r, _ = pipe
    ended_at: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tls_server.sweep)
            await trio.sleep(1)  # the sweeper is asleep: no handshake in progress
            assert tls_server._sweeping and tls_server._wake is not None
            t0 = trio.current_time()
            conn = await tls_server.handshake(_PipeEnd(r), None, 443, 20.0)  # type: ignore[arg-type]
            ended_at.append(trio.current_time() - t0)
            assert conn is None
            assert not tls_server._shaking  # forgotten
            await trio.sleep(1)
            assert tls_server._wake is not None  # asleep again
            nursery.cancel_scope.cancel()
        assert not tls_server._sweeping

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 20.0 <= ended_at[0] <= 20.0 + SWEEP_S + 1e-9
    st = tls_server.statistics()
    assert (st.timeouts, st.failures, st.handshakes) == (1, 1, 0)


def test_without_a_sweeper_a_handshake_has_its_own_deadline(tls_server, pipe):
    import trio
    import trio.testing

    r, _ = pipe

    async def main() -> None:
        t0 = trio.current_time()
        conn = await tls_server.handshake(_PipeEnd(r), None, 443, 20.0)  # type: ignore[arg-type]
        assert conn is None and trio.current_time() - t0 == 20.0
        assert not tls_server._shaking

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert tls_server.statistics().timeouts == 1


def test_handshakes_in_progress_end_with_the_sweeper(tls_server, pipe):
    import trio
    import trio.testing

    r, _ = pipe
    got: list[object] = []

    async def shake() -> None:
        got.append(await tls_server.handshake(_PipeEnd(r), None, 443, 20.0))  # type: ignore[arg-type]

    async def main() -> None:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tls_server.sweep)
                await trio.sleep(0.1)
                outer.start_soon(shake)
                await trio.sleep(1)
                assert got == [] and len(tls_server._shaking) == 1
                nursery.cancel_scope.cancel()  # the edge stops: its sweeper with it
            t0 = trio.current_time()
        assert got == [None] and trio.current_time() - t0 < 1  # not after its 20 s

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_refused_handshake_is_a_failure_and_leaves_no_deadline(tls_server, pipe):
    import os

    import trio
    import trio.testing

    r, w = pipe
    os.write(w, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not a ClientHello

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tls_server.sweep)
            await trio.sleep(0.1)
            conn = await tls_server.handshake(_PipeEnd(r), None, 443, 20.0)  # type: ignore[arg-type]
            assert conn is None
            assert not tls_server._shaking
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    st = tls_server.statistics()
    assert (st.timeouts, st.failures) == (0, 1)


def test_expire_due_marks_only_the_overdue(tls_server, pipe):
    import trio

    r, _ = pipe
    from edge.tlsconn import TlsConn

    ctx = tls_server.certs.for_port(443)
    early, late = TlsConn(_PipeEnd(r), ctx), TlsConn(_PipeEnd(r), ctx)  # type: ignore[arg-type]

    async def main() -> None:
        tls_server._shaking.update({early: 5.0, late: 9.0})
        assert tls_server.expire_due(4.9) == 0
        assert tls_server.expire_due(5.0) == 1
        assert early.expired and not late.expired
        assert list(tls_server._shaking) == [late]

    trio.run(main)
