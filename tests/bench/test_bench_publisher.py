"""The bench's HTTP publisher (plain sockets, answers parsed with httptools) against a real
HTTP server on 127.0.0.1: every POST arrives whole, answers are checked, connections the
server closes are opened again, kept-alive ones reused, several POSTs in flight."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.publisher import HttpPublisher


@contextmanager
def _server(keep_alive: bool, status: int = 200) -> Iterator[tuple[str, list, list]]:
    """A publish endpoint: (its URL, the bodies it got, the client ports they came from)."""
    bodies: list[bytes] = []
    ports: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            assert self.path == "/publish/"
            body = self.rfile.read(int(self.headers["Content-Length"]))
            bodies.append(body)
            ports.append(self.client_address[1])
            answer = b"Published\n" if status == 200 else b"Nope.\n"
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            if not keep_alive:  # as Pushpin's and gripcast's publish APIs answer
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", bodies, ports
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize("keep_alive", [False, True], ids=["close", "keep-alive"])
@pytest.mark.parametrize("conns", [1, 3])
def test_every_post_arrives_and_connections_are_reused_only_when_kept(keep_alive, conns):
    with _server(keep_alive) as (url, bodies, ports):
        pub = HttpPublisher(url, conns)
        items = [[{"channel": f"c{k}", "formats": {}, "n": n}] for n, k in enumerate(range(9))]
        for batch in items[:6]:
            pub.publish(batch)
        for batch in items[6:]:
            pub.publish_json([json.dumps(i) for i in batch])
        pub.close()
    got = [json.loads(b)["items"] for b in bodies]
    # one connection: in order; several in flight may arrive in any order
    assert got == items if conns == 1 else sorted(got, key=str) == sorted(items, key=str)
    distinct = len(set(ports))
    assert distinct == (conns if keep_alive else len(items))


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_an_answer_other_than_200_raises_with_its_body():
    with _server(False, status=503) as (url, _, _):
        pub = HttpPublisher(url)
        with pytest.raises(RuntimeError, match=r"publish answered 503: b'Nope.\\n'"):
            pub.publish([{"channel": "c", "formats": {}}])
        pub.close()


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_a_target_that_is_gone_is_an_error_not_a_hang():
    with _server(False) as (url, _, _):
        pass  # stopped: nothing listens there now
    pub = HttpPublisher(url)
    with pytest.raises(OSError):
        pub.publish([{"channel": "c", "formats": {}}])
    pub.close()
