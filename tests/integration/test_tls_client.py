"""HTTPS and WSS on the edges (issue 14, client side): real broker and edge processes, real
certificates made at test time (a CA, a default pair and two SNI names), real clients with
verification on (curl, httpx, ``websockets``, Python's ssl), publishes with gripcontrol.

Hostile input over TLS: garbage instead of a ClientHello, a handshake that stalls, and a
renegotiation attempt each close that connection only (an open stream keeps flowing)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest
import websockets
from gripcontrol import GripPubControl, HttpStreamFormat, WebSocketMessageFormat
from pubcontrol import Item

from tests.helpers import skip_missing, wait_for
from tests.integration.cluster import Cluster, Origin
from tests.integration.test_parking import read_until
from tests.integration.wsorigin import WohOriginApp
from tests.tlscerts import make_ca

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    # the Grip-Sig is checked with "changeme", the edge's default key (Pushpin's)
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


def _stream(req):
    ch = req.path.split("ch=")[-1]
    return (
        200,
        {"Content-Type": "text/plain", "Grip-Hold": "stream", "Grip-Channel": ch},
        b"[open]\n",
    )


def _sse(req):
    ch = req.path.split("ch=")[-1]
    headers = {"Content-Type": "text/event-stream", "Grip-Hold": "stream", "Grip-Channel": ch}
    return 200, headers, b"event: hello\ndata: hi\n\n"


def _poll(req):
    ch = req.path.split("ch=")[-1]
    headers = {"Content-Type": "text/plain", "Grip-Hold": "response", "Grip-Channel": ch}
    return 200, headers, b"timeout\n"


def _echo(req):
    proto = req.headers.get("X-Forwarded-Proto", "-")
    which = req.headers.get("X-Which", "-")
    return 200, {"Content-Type": "text/plain"}, f"proto={proto} which={which}\n".encode()


class Env:
    def __init__(self, tmp, origin, woh, cluster, ca, pairs, https_port):
        self.tmp, self.origin, self.woh, self.cluster = tmp, origin, woh, cluster
        self.ca, self.pairs, self.https_port = ca, pairs, https_port

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.https_port}{path}"

    def publish(self, channel: str, fmt) -> None:
        GripPubControl({"control_uri": self.cluster.publish_url}).publish(
            channel, Item(fmt), blocking=True
        )

    def client_ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca.cert_path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    certs = tmp / "certs"
    certs.mkdir()
    ca = make_ca(tmp)
    pairs = {
        "default": ca.issue(certs, "default", ["localhost", "127.0.0.1"]),
        "alpha.test": ca.issue(certs, "alpha.test", ["alpha.test"]),
        "beta": ca.issue(certs, "_.beta.test", ["*.beta.test"]),
    }
    routes = {"/stream": _stream, "/sse": _sse, "/poll": _poll, "/echo": _echo, "/which": _echo}
    with Origin(routes) as origin, WohOriginApp() as woh:
        https_port, metrics_port = _free_port(), _free_port()
        with Cluster(
            tmp,
            routes=[
                f"*,path_beg=/ws 127.0.0.1:{woh.port},over_http",
                f"*,path_beg=/which,ssl=yes,header=X-Which:tls 127.0.0.1:{origin.port}",
                f"*,path_beg=/which,ssl=no,header=X-Which:plain 127.0.0.1:{origin.port}",
                f"* 127.0.0.1:{origin.port}",
            ],
            https_port=[f"127.0.0.1:{https_port}"],
            tls_certs_dir=str(certs),
            client_head_timeout_s=2.0,
            edge_metrics_port=metrics_port,
        ) as cluster:
            e = Env(tmp, origin, woh, cluster, ca, pairs, https_port)
            e.metrics_port = metrics_port
            yield e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer_serial(env: Env, server_name: str | None) -> int:
    """The serial of the certificate the edge presents for ``server_name`` (SNI)."""
    from cryptography import x509

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", env.https_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def _serial_of(tls: ssl.SSLSocket) -> int:
    from cryptography import x509

    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class TlsStream:
    """A raw HTTPS stream reader in a thread (verification on), like cluster.StreamClient."""

    def __init__(self, env: Env, path: str) -> None:
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.sock = env.client_ctx().wrap_socket(
            socket.create_connection(("127.0.0.1", env.https_port), timeout=10),
            server_hostname="localhost",
        )
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while data := self.sock.recv(65536):
                with self.cond:
                    self.buf += data
                    self.cond.notify_all()
        except OSError:
            pass

    def read_until(self, text: bytes, timeout: float = 10.0) -> bytes:
        start = 0  # where the next search begins (each byte is searched about once)

        def found() -> bool:
            nonlocal start
            if self.buf.find(text, start) >= 0:
                return True
            start = max(start, len(self.buf) - len(text) + 1)
            return False

        with self.cond:
            if not self.cond.wait_for(found, timeout):
                tail = bytes(self.buf[-300:])
                raise AssertionError(
                    f"{text!r} not received; {len(self.buf)} bytes, ending {tail!r}"
                )
            return bytes(self.buf)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def test_curl_and_httpx_verify_the_chain(env):
    """A browser-grade check: the chain verifies against the CA, for the host name asked."""
    out = subprocess.run(
        ["curl", "-sS", "--cacert", env.ca.cert_path, env.url("/echo")],
        capture_output=True,
        timeout=20,
        check=True,
    )
    assert out.stdout == b"proto=https which=-\n"
    r = httpx.get(env.url("/echo"), verify=env.client_ctx(), timeout=10)
    assert r.status_code == 200 and r.text == "proto=https which=-\n"
    assert r.http_version == "HTTP/1.1"
    # plain HTTP beside it: no X-Forwarded-Proto, and a client cannot claim https
    r = httpx.get(env.cluster.url("/echo"), headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert r.text == "proto=- which=-\n"
    # a name the certificate does not cover fails verification (curl's exit 60)
    bad = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            env.ca.cert_path,
            "--resolve",
            f"nope.test:{env.https_port}:127.0.0.1",
            f"https://nope.test:{env.https_port}/echo",
        ],
        capture_output=True,
        timeout=20,
    )
    assert bad.returncode == 60, bad.stderr


def test_routes_ssl_condition(env):
    assert httpx.get(env.url("/which"), verify=env.client_ctx(), timeout=10).text == (
        "proto=https which=tls\n"
    )
    assert httpx.get(env.cluster.url("/which"), timeout=10).text == "proto=- which=plain\n"


def test_sni_picks_the_certificate(env):
    p = env.pairs
    assert _peer_serial(env, "alpha.test") == p["alpha.test"].serial
    assert _peer_serial(env, "www.beta.test") == p["beta"].serial  # _.beta.test: wildcard
    assert _peer_serial(env, "ALPHA.test") == p["alpha.test"].serial
    assert _peer_serial(env, "other.test") == p["default"].serial
    assert _peer_serial(env, None) == p["default"].serial
    # and verification passes for the SNI name with the CA
    r = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            env.ca.cert_path,
            "--resolve",
            f"alpha.test:{env.https_port}:127.0.0.1",
            f"https://alpha.test:{env.https_port}/echo",
        ],
        capture_output=True,
        timeout=20,
    )
    assert r.returncode == 0 and r.stdout == b"proto=https which=-\n", r.stderr


def test_stream_sse_and_long_poll_over_https(env):
    s = TlsStream(env, "/stream?ch=tls-s1")
    sse = TlsStream(env, "/sse?ch=tls-e1")
    try:
        s.read_until(b"[open]\n")
        sse.read_until(b"data: hi\n\n")
        env.publish("tls-s1", HttpStreamFormat("one\n"))
        env.publish("tls-e1", HttpStreamFormat("event: m\ndata: two\n\n"))
        assert b"one\n" in s.read_until(b"one\n")
        assert b"data: two" in sse.read_until(b"data: two\n\n")
        # long-poll: published http-response answers the held request
        result = {}

        def poll():
            result["r"] = httpx.get(env.url("/poll?ch=tls-p1"), verify=env.client_ctx(), timeout=20)

        t = threading.Thread(target=poll)
        t.start()
        from gripcontrol import HttpResponseFormat

        def published():
            env.publish("tls-p1", HttpResponseFormat(body="answer\n"))
            t.join(0.3)
            return not t.is_alive()

        wait_for(published, timeout=10, what="long-poll answered")
        assert result["r"].text == "answer\n"
        # many messages in one burst reach the TLS stream, in order
        for i in range(50):
            env.publish("tls-s1", HttpStreamFormat(f"m{i}\n"))
        data = s.read_until(b"m49\n")
        assert data.index(b"m0\n") < data.index(b"m25\n") < data.index(b"m49\n")
    finally:
        s.close()
        sse.close()


def test_websocket_over_wss(env):
    url = f"wss://localhost:{env.https_port}/ws?channel=tls-w1"

    async def main():
        async with websockets.connect(url, ssl=env.client_ctx()) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 5) == "hello"
            await asyncio.to_thread(env.publish, "tls-w1", WebSocketMessageFormat("pushed"))
            assert await asyncio.wait_for(ws.recv(), 5) == "pushed"

    asyncio.run(main())


def test_idle_wss_sessions_park_and_get_messages(env):
    """Idle WebSockets over wss park like ws ones (edge.parking): publishes reach them through
    TLS without waking them, a message from the client wakes one and is echoed, a close ends
    it, and the TLS connection gauge counts the parked ones until they close."""
    url = f"wss://localhost:{env.https_port}/ws?channel=tls-wpark"
    base = _parked(env)
    tls_base = _parked(env, "gripcast_edge_tls_connections")
    n = 4

    async def main():
        socks = [
            await websockets.connect(url, ssl=env.client_ctx(), ping_interval=None)
            for _ in range(n)
        ]
        try:
            for ws in socks:
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), 5) == "hello"
            await asyncio.to_thread(
                wait_for, lambda: _parked(env) >= base + n, what="the wss sessions parked"
            )
            assert _parked(env, "gripcast_edge_tls_connections") >= tls_base + n
            parks = _parked(env, "gripcast_edge_parks_total")
            await asyncio.to_thread(env.publish, "tls-wpark", WebSocketMessageFormat("pushed"))
            for ws in socks:
                assert await asyncio.wait_for(ws.recv(), 5) == "pushed"
            assert _parked(env, "gripcast_edge_parks_total") == parks  # nobody woke
            await socks[0].send("again")  # wakes that one: echoed, then it parks again
            assert await asyncio.wait_for(socks[0].recv(), 5) == "again"
            await asyncio.to_thread(
                wait_for,
                lambda: _parked(env, "gripcast_edge_parks_total") > parks,
                what="parked again",
            )
        finally:
            for ws in socks:
                await ws.close()

    asyncio.run(main())
    wait_for(lambda: _parked(env) <= base, timeout=5, what="all unparked")
    wait_for(
        lambda: _parked(env, "gripcast_edge_tls_connections") <= tls_base,
        timeout=5,
        what="the TLS connection count back",
    )


def test_garbage_and_stalled_handshakes_close_only_that_connection(env):
    s = TlsStream(env, "/stream?ch=tls-h1")
    try:
        s.read_until(b"[open]\n")
        # garbage instead of a ClientHello: closed at once
        with socket.create_connection(("127.0.0.1", env.https_port), timeout=5) as g:
            g.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
            g.settimeout(5)
            got = b""
            while chunk := g.recv(4096):
                got += chunk
            assert b"HTTP/1.1" not in got  # never answered in plaintext
        # a ClientHello that stops half-way: closed after client_head_timeout_s (2 s here)
        with socket.create_connection(("127.0.0.1", env.https_port), timeout=10) as st:
            st.sendall(bytes.fromhex("160301") + b"\x02\x00" + b"\x01\x00\x01\xfc\x03\x03")
            started = time.monotonic()
            st.settimeout(10)
            while st.recv(4096):  # nothing is sent back; EOF when the edge gives up
                pass
            assert 1.5 <= time.monotonic() - started < 8
        # the stream kept flowing meanwhile
        env.publish("tls-h1", HttpStreamFormat("still here\n"))
        s.read_until(b"still here\n")
        assert _metric(env, "gripcast_edge_tls_handshake_failures_total") >= 2
        assert _metric(env, "gripcast_edge_tls_handshake_timeouts_total") >= 1
        assert _metric(env, "gripcast_edge_tls_handshakes_total") >= 1
        assert _metric(env, "gripcast_edge_tls_connections") >= 1  # the stream
    finally:
        s.close()


def _metric(env: Env, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{env.metrics_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_renegotiation_is_refused(env):
    if shutil.which("openssl") is None:
        skip_missing("openssl")
    s = TlsStream(env, "/stream?ch=tls-r1")
    try:
        s.read_until(b"[open]\n")
        proc = subprocess.Popen(
            [
                "openssl",
                "s_client",
                "-tls1_2",
                "-connect",
                f"127.0.0.1:{env.https_port}",
                "-servername",
                "localhost",
                "-CAfile",
                env.ca.cert_path,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            # "R" asks s_client to renegotiate once the handshake is done
            out, _ = proc.communicate(b"R\n", timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        text = out.decode("latin-1")
        assert "RENEGOTIATING" in text, text
        assert "no renegotiation" in text, text  # the edge's alert: refused
        assert proc.returncode != 0
        env.publish("tls-r1", HttpStreamFormat("after reneg\n"))
        s.read_until(b"after reneg\n")
    finally:
        s.close()


def test_sighup_reload_new_connections_only(env):
    """New certificate files + SIGHUP: a new connection sees the new certificate, while a
    stream opened before keeps flowing on the old one."""
    s = TlsStream(env, "/stream?ch=tls-reload")
    try:
        s.read_until(b"[open]\n")
        old = env.pairs["default"].serial
        assert _serial_of(s.sock) == old
        certs = env.tmp / "certs"
        new = env.ca.issue(certs, "default", ["localhost", "127.0.0.1"])
        edge = env.cluster.edge_procs[0].proc
        os.kill(edge.pid, signal.SIGHUP)
        wait_for(
            lambda: _peer_serial(env, "localhost") == new.serial,
            timeout=10,
            what="new certificate served",
        )
        assert new.serial != old
        env.publish("tls-reload", HttpStreamFormat("after reload\n"))
        s.read_until(b"after reload\n")
        assert _serial_of(s.sock) == old  # the open connection kept its certificate
        env.pairs["default"] = new
        r = httpx.get(env.url("/echo"), verify=env.client_ctx(), timeout=10)
        assert r.status_code == 200
        # a bad pair on the next SIGHUP (a key that does not match): the reload fails and the
        # running certificates stay
        other = env.ca.issue(env.tmp, "other", ["localhost"])
        env.ca.issue(certs, "default", ["localhost", "127.0.0.1"])
        shutil.copy(other.key, certs / "default.key")
        notify = env.cluster.edge_procs[0].notify
        os.kill(edge.pid, signal.SIGHUP)
        _wait_status(notify, b"STATUS=serving (last reload failed)")
        assert _peer_serial(env, "localhost") == new.serial
        env.publish("tls-reload", HttpStreamFormat("after bad reload\n"))
        s.read_until(b"after bad reload\n")
    finally:
        s.close()


def _wait_status(notify, status: bytes, timeout: float = 10.0) -> None:
    """Read the edge's sd_notify datagrams until one carries ``status``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {status!r} from the edge")
        notify.sock.settimeout(remaining)
        try:
            data = notify.sock.recv(4096)
        except TimeoutError:
            continue
        if status in data.split(b"\n"):
            return


def _parked(env: Env, name: str = "gripcast_edge_parked_connections") -> float:
    return _metric(env, name)


def _tls_stream(env: Env, path: str) -> ssl.SSLSocket:
    """An HTTPS stream read in the test's thread (no reader thread: a close is a close)."""
    s = env.client_ctx().wrap_socket(
        socket.create_connection(("127.0.0.1", env.https_port), timeout=10),
        server_hostname="localhost",
    )
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return s


def test_idle_tls_streams_park_and_get_messages_and_leave(env):
    """Idle HTTPS streams park like plain ones (no task while idle, edge.parking): a publish
    reaches each through TLS without waking it, a client's hang-up wakes and ends its hold,
    a record that does not decrypt ends only that connection."""
    base = _parked(env)
    tls_base = _parked(env, "gripcast_edge_tls_connections")
    n = 6
    clients = [_tls_stream(env, "/sse?ch=tls-park") for _ in range(n)]
    try:
        for c in clients:
            read_until(c, b"data: hi\n\n")
        wait_for(lambda: _parked(env) >= base + n, what="the TLS streams parked")
        assert _parked(env, "gripcast_edge_tls_connections") >= n  # still counted while parked
        parks = _parked(env, "gripcast_edge_parks_total")
        env.publish("tls-park", HttpStreamFormat("data: parked\n\n"))
        for c in clients:
            read_until(c, b"data: parked\n\n")
        assert _parked(env) >= base + n  # delivery wrote through TLS: nobody woke
        assert _parked(env, "gripcast_edge_parks_total") == parks
        # clients that hang up are seen while parked
        clients[0].close()
        clients[1].close()
        wait_for(lambda: _parked(env) <= base + n - 2, timeout=5, what="the closed ones unparked")
        # bytes that are no TLS record of this session: that connection only is closed
        raw = socket.socket(fileno=os.dup(clients[2].fileno()))
        raw.sendall(b"\x17\x03\x03\x00\x05hello")  # application data without a valid MAC
        raw.close()
        clients[2].settimeout(5)
        with pytest.raises((ssl.SSLError, OSError, EOFError)):
            while clients[2].recv(65536):
                pass
            raise EOFError("closed by the edge")
        env.publish("tls-park", HttpStreamFormat("data: after\n\n"))
        for c in clients[3:]:
            read_until(c, b"data: after\n\n")
    finally:
        for c in clients:
            c.close()
    wait_for(lambda: _parked(env) <= base, timeout=5, what="all unparked")
    wait_for(
        lambda: _parked(env, "gripcast_edge_tls_connections") <= tls_base,
        timeout=5,
        what="the TLS connection count back",
    )


def test_session_resumption(env):
    """A second connection resumes the first one's session (a TLS 1.2 ticket)."""
    ctx = env.client_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def get(session=None):
        raw = socket.create_connection(("127.0.0.1", env.https_port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := tls.recv(65536):
                body += chunk
            return tls.session, tls.session_reused, body

    session, reused, body = get()
    assert not reused and body.endswith(b"proto=https which=-\n")
    _, reused, body = get(session)
    assert reused and body.endswith(b"proto=https which=-\n")
    assert _metric(env, "gripcast_edge_tls_handshakes_resumed_total") >= 1


def test_bad_certificate_stops_the_edge_with_exit_78(tmp_path, env):
    expired = env.ca.issue(tmp_path, "old", ["localhost"], days=-1)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        f'https_port = ["127.0.0.1:{_free_port()}"]\n'
        f'tls_cert = "{expired.cert}"\ntls_key = "{expired.key}"\n'
        f"edge_ctl_port = {env.cluster.ports['edge_ctl_port']}\n"
        f"edge_pub_port = {env.cluster.ports['edge_pub_port']}\n"
    )
    from tests.integration.cluster import gripcast

    out = subprocess.run(
        gripcast("edge", "--config", str(cfg), "--port", f"127.0.0.1:{_free_port()}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 78, out.stderr
    assert "the certificate expired on" in out.stderr
    out = subprocess.run(
        gripcast("run", "--config", str(cfg), "--port", f"127.0.0.1:{_free_port()}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 78, out.stderr
    assert "the certificate expired on" in out.stderr


def test_sigterm_drains_tls_streams(tmp_path):
    """SIGTERM: a stream held over TLS gets its last chunk, through the TLS layer, before the
    edge exits 0 (the drain waits for TLS connections to flush)."""
    ca = make_ca(tmp_path)
    pair = ca.issue(tmp_path, "server", ["localhost"])
    https_port = _free_port()
    with (
        Origin({"/stream": _stream}) as origin,
        Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            https_port=[f"127.0.0.1:{https_port}"],
            tls_cert=pair.cert,
            tls_key=pair.key,
            drain_timeout_s=5.0,
        ) as cluster,
    ):
        env = Env(tmp_path, origin, None, cluster, ca, {}, https_port)
        s = TlsStream(env, "/stream?ch=tls-drain")
        try:
            s.read_until(b"[open]\n")
            env.publish("tls-drain", HttpStreamFormat("one\n"))
            s.read_until(b"one\n")
            edge = cluster.edge_procs[0].proc
            t0 = time.monotonic()
            edge.send_signal(signal.SIGTERM)
            data = s.read_until(b"0\r\n\r\n")  # the last chunk: a complete response
            assert data.endswith(b"one\n\r\n0\r\n\r\n")
            assert edge.wait(10) == 0
            assert time.monotonic() - t0 < 5.0
            s.thread.join(5)
            assert not s.thread.is_alive()  # and the connection was closed after it
        finally:
            s.close()


def test_stalled_tls_client_is_cut_off_others_keep_flowing(tmp_path):
    """Back-pressure through TLS: a TLS client that stops reading fills its socket and its
    session buffer (plaintext backlog plus unsent ciphertext), and is cut off
    (client_buffer_bytes) as a plain one would be; a reading TLS client on the same channel
    gets every message."""
    ca = make_ca(tmp_path)
    pair = ca.issue(tmp_path, "server", ["localhost"])
    https_port, metrics_port = _free_port(), _free_port()
    n, pad = 400, 16000
    with (
        Origin({"/stream": _stream}) as origin,
        Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            https_port=[f"127.0.0.1:{https_port}"],
            tls_cert=pair.cert,
            tls_key=pair.key,
            client_buffer_bytes=65536,
            edge_metrics_port=metrics_port,
        ) as cluster,
    ):
        env = Env(tmp_path, origin, None, cluster, ca, {}, https_port)
        env.metrics_port = metrics_port
        reader = TlsStream(env, "/stream?ch=tls-slow")
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", https_port))
        stalled = env.client_ctx().wrap_socket(raw, server_hostname="localhost")
        try:
            stalled.sendall(b"GET /stream?ch=tls-slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reader.read_until(b"[open]\n")
            head = b""
            while b"[open]\n" not in head:
                head += stalled.recv(4096)
            with httpx.Client(timeout=10) as pub:
                for k in range(0, n, 10):
                    items = [
                        {
                            "channel": "tls-slow",
                            "formats": {"http-stream": {"content": f"m{j} " + "x" * pad + "\n"}},
                        }
                        for j in range(k, k + 10)
                    ]
                    r = pub.post(cluster.publish_url + "/publish/", json={"items": items})
                    assert r.status_code == 200
            data = reader.read_until(f"m{n - 1} ".encode(), timeout=30)
            assert all(f"m{j} ".encode() in data for j in range(n))
            wait_for(
                lambda: _metric(env, "gripcast_edge_slow_consumer_disconnects_total") >= 1,
                timeout=15,
                what="stalled TLS client cut off",
            )
            # the stalled client reads what was on its way, then EOF: no last chunk
            stalled.settimeout(10)
            got = head
            try:
                while chunk := stalled.recv(65536):
                    got += chunk
            except (ssl.SSLError, ConnectionResetError):
                pass
            assert b"\r\n0\r\n\r\n" not in got[-16:]
            assert f"m{n - 1} ".encode() not in got
        finally:
            stalled.close()
            reader.close()


def test_tls_client_over_maxconn_gets_503_after_the_handshake(tmp_path):
    """Past client_maxconn an HTTPS client is answered as a plain one: the handshake completes
    (counted), then ``503 Too many connections.`` through TLS, then the close; the held
    connection keeps flowing."""
    ca = make_ca(tmp_path)
    pair = ca.issue(tmp_path, "server", ["localhost"])
    https_port, metrics_port = _free_port(), _free_port()
    with (
        Origin({"/stream": _stream}) as origin,
        Cluster(
            tmp_path,
            [f"* 127.0.0.1:{origin.port}"],
            https_port=[f"127.0.0.1:{https_port}"],
            tls_cert=pair.cert,
            tls_key=pair.key,
            client_maxconn=1,
            edge_metrics_port=metrics_port,
        ) as cluster,
    ):
        env = Env(tmp_path, origin, None, cluster, ca, {}, https_port)
        env.metrics_port = metrics_port
        held = TlsStream(env, "/stream?ch=tls-max")
        try:
            held.read_until(b"[open]\n")
            before = _metric(env, "gripcast_edge_tls_handshakes_total")
            with env.client_ctx().wrap_socket(
                socket.create_connection(("127.0.0.1", https_port), timeout=10),
                server_hostname="localhost",
            ) as extra:
                extra.sendall(b"GET /stream?ch=tls-max HTTP/1.1\r\nHost: localhost\r\n\r\n")
                got = b""
                try:
                    while chunk := extra.recv(65536):
                        got += chunk
                except (ssl.SSLError, ConnectionResetError):
                    pass
            assert got.startswith(b"HTTP/1.1 503 "), got
            assert got.endswith(b"Too many connections.\n"), got
            assert _metric(env, "gripcast_edge_tls_handshakes_total") == before + 1
            env.publish("tls-max", HttpStreamFormat("still\n"))
            held.read_until(b"still\n")
        finally:
            held.close()
