"""The built-in demo origin: an ordinary HTTP app that answers with GRIP instructions.

It shows what a user's origin does behind gripcast (or Pushpin); it holds no connections
itself.  Endpoints (``?channel=NAME``, default ``test``):

  GET  /              a page that streams ``/stream`` and can publish from the browser
  GET  /stream        HTTP streaming hold: ``Grip-Hold: stream`` + ``Grip-Channel``
  GET  /events        Server-Sent Events hold (publish with ``gripcast publish --sse``)
  GET  /poll          long-poll hold: ``Grip-Hold: response`` (timeout 55 s)
  POST /send          form/body ``text=...``: publishes to the channel via the broker API
  GET  /chat          the chat page (Pushpin's "serverless WebSocket chat"): a WebSocket to
                      ``/chat/ws?room=NAME``
  POST /chat/ws       the chat's WebSocket-over-HTTP endpoint (route target ``over_http``):
                      stateless; OPEN subscribes the connection to ``chat-<room>`` with a
                      ``c:`` control message, each TEXT line is published to that channel as a
                      ``ws-message`` through the broker's HTTP API, so every tab in the room
                      (on any edge) receives it
"""

from __future__ import annotations

import html
import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from edge.ws.events import EventsError, WsEvent, decode_events, encode_events
from gripcast.publish import build_item, post_items

log = logging.getLogger(__name__)


def _channel(query: dict[str, list[str]]) -> str:
    name = (query.get("channel") or ["test"])[0]
    return name if name and "\x00" not in name and len(name) <= 200 else "test"


class DemoHandler(BaseHTTPRequestHandler):
    server_version = "gripcast-demo"
    protocol_version = "HTTP/1.1"
    publish_url = "http://127.0.0.1:5561"
    publish_command = ".venv/bin/gripcast publish test hello"

    def log_message(self, fmt: str, *args: Any) -> None:  # route the stdlib's access log to logging
        log.debug("demo %s", fmt % args)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        channel = _channel(query)
        if url.path == "/":
            page = resources.files("gripcast").joinpath("static/index.html").read_text("utf-8")
            page = page.replace("{{publish_command}}", html.escape(self.publish_command))
            self._send(200, page.encode("utf-8"), {"Content-Type": "text/html; charset=utf-8"})
        elif url.path == "/stream":
            self._send(
                200,
                b"[stream open]\n",
                {
                    "Content-Type": "text/plain",
                    "Grip-Hold": "stream",
                    "Grip-Channel": channel,
                },
            )
        elif url.path == "/events":
            self._send(
                200,
                b"event: open\ndata: {}\n\n",
                {
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "Grip-Hold": "stream",
                    "Grip-Channel": channel,
                    "Grip-Keep-Alive": ":\\n\\n; format=cstring; timeout=20",
                },
            )
        elif url.path == "/chat":
            chat_page = resources.files("gripcast").joinpath("static/chat.html").read_bytes()
            self._send(200, chat_page, {"Content-Type": "text/html; charset=utf-8"})
        elif url.path == "/poll":
            self._send(
                200,
                b"no message yet\n",
                {
                    "Content-Type": "text/plain",
                    "Grip-Hold": "response",
                    "Grip-Channel": channel,
                    "Grip-Timeout": "55",
                },
            )
        else:
            self._send(404, b"Not Found\n", {"Content-Type": "text/plain"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/chat/ws":
            self._chat_ws(url)
            return
        if url.path != "/send":
            self._send(404, b"Not Found\n", {"Content-Type": "text/plain"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > 10000:
            self._send(413, b"Message too large\n", {"Content-Type": "text/plain"})
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        text = (form.get("text") or [""])[0]
        channel = _channel(parse_qs(url.query))
        try:
            status, body = post_items(self.publish_url, [build_item(channel, text)], timeout=5)
        except OSError as exc:
            status, body = 502, f"cannot reach the broker: {exc}\n"
        self._send(
            200 if status == 200 else 502, body.encode("utf-8"), {"Content-Type": "text/plain"}
        )

    def _chat_ws(self, url: SplitResult) -> None:
        """One WebSocket-over-HTTP request of the chat (no state kept between requests)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 100_000:
            self._send(413, b"Too large\n", {"Content-Type": "text/plain"})
            return
        try:
            events = decode_events(self.rfile.read(length))
        except EventsError:
            self._send(400, b"Bad events\n", {"Content-Type": "text/plain"})
            return
        room = _channel({"channel": parse_qs(url.query).get("room") or ["lobby"]})
        channel = "chat-" + room
        out = []
        headers = {"Content-Type": "application/websocket-events"}
        for e in events:
            if e.type == "OPEN":
                out.append(WsEvent("OPEN"))
                control = json.dumps({"type": "subscribe", "channel": channel})
                out.append(WsEvent("TEXT", b"c:" + control.encode()))
                headers["Sec-WebSocket-Extensions"] = 'grip; message-prefix=""'
            elif e.type == "TEXT":
                line = (e.content or b"").decode("utf-8", "replace").strip()[:2000]
                if line:
                    item = {"channel": channel, "formats": {"ws-message": {"content": line}}}
                    try:
                        post_items(self.publish_url, [item], timeout=5)
                    except OSError as exc:
                        log.warning("chat publish failed: %s", exc)
            elif e.type == "CLOSE":
                out.append(WsEvent("CLOSE", e.content))
        self._send(200, encode_events(out), headers)


def serve_demo(
    addr: str,
    port: int,
    publish_url: str,
    ready: threading.Event | None = None,
    publish_command: str = DemoHandler.publish_command,
) -> int:
    """Serve until SIGINT/SIGTERM (then exit 0), or until the caller's thread shuts it down."""
    handler = type(
        "BoundDemoHandler",
        (DemoHandler,),
        {"publish_url": publish_url, "publish_command": publish_command},
    )
    httpd = ThreadingHTTPServer((addr, port), handler)
    httpd.daemon_threads = True
    log.info("demo origin listening on http://%s:%d (publishing to %s)", addr, port, publish_url)
    from broker.runtime.sdnotify import notify

    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for serve_forever, which runs in this very thread: hand it over
            threading.Thread(target=httpd.shutdown, daemon=True).start()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    notify("READY=1")
    if ready is not None:
        ready.set()
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    if threading.current_thread() is threading.main_thread():
        from broker.runtime.procsignals import ignore_stop_signals_for_exit

        ignore_stop_signals_for_exit()  # a second stop signal must not kill a clean exit
    log.info("demo origin stopped")
    return 0
