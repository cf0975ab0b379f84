"""A WebSocket-over-HTTP origin app for tests, written with gripcontrol's helpers as a user would.

POST /ws?channel=NAME[&prev=ID]: OPEN -> accept with ``grip; message-prefix=""``,
``Set-Meta-User: alice``, subscribe to NAME (with ``prev-id`` when ``prev`` is given) and to
each ``also=NAME`` channel.
TEXT ``close`` -> CLOSE 4000 "bye"; TEXT ``unsub`` -> unsubscribe; TEXT ``detach`` -> detach;
TEXT ``sub:NAME`` -> subscribe to NAME and TEXT ``subscribed NAME`` after it;
TEXT ``ka`` -> keep-alive "ka!" every 1 s (interval); TEXT ``delay`` -> send-delayed "later";
any other TEXT/BINARY is echoed; CLOSE is answered with CLOSE; PING with PONG (same payload).  Every request is recorded.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from gripcontrol import (
    WebSocketEvent,
    decode_websocket_events,
    encode_websocket_events,
    websocket_control_message,
)


class WohOriginApp:
    def __init__(self, reject_open: bool = False) -> None:
        self.requests: list = []  # (headers dict, [events])
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                events = decode_websocket_events(body)
                with app.lock:
                    app.requests.append((dict(self.headers), [(e.type, e.content) for e in events]))
                q = parse_qs(urlsplit(self.path).query)
                channel = (q.get("channel") or ["test"])[0]
                out, headers = [], {"Content-Type": "application/websocket-events"}
                for e in events:
                    if e.type == "OPEN":
                        if reject_open:
                            self._reply(
                                403, {"Content-Type": "text/plain", "X-Why": "no"}, b"go away\n"
                            )
                            return
                        out.append(WebSocketEvent("OPEN"))
                        args = {"channel": channel}
                        if q.get("prev"):
                            args["prev-id"] = q["prev"][0]
                        out.append(
                            WebSocketEvent(
                                "TEXT", "c:" + websocket_control_message("subscribe", args)
                            )
                        )
                        for also in q.get("also", []):
                            out.append(
                                WebSocketEvent(
                                    "TEXT",
                                    "c:"
                                    + websocket_control_message("subscribe", {"channel": also}),
                                )
                            )
                        headers["Sec-WebSocket-Extensions"] = 'grip; message-prefix=""'
                        headers["Set-Meta-User"] = "alice"
                    elif e.type == "TEXT":
                        text = e.content.decode()
                        if text == "close":
                            out.append(WebSocketEvent("CLOSE", (4000).to_bytes(2, "big") + b"bye"))
                        elif text == "unsub":
                            out.append(
                                WebSocketEvent(
                                    "TEXT",
                                    "c:"
                                    + websocket_control_message(
                                        "unsubscribe", {"channel": channel}
                                    ),
                                )
                            )
                        elif text == "detach":
                            out.append(
                                WebSocketEvent("TEXT", "c:" + websocket_control_message("detach"))
                            )
                        elif text == "ka":
                            out.append(
                                WebSocketEvent(
                                    "TEXT",
                                    "c:"
                                    + websocket_control_message(
                                        "keep-alive",
                                        {"content": "ka!", "timeout": 1, "mode": "interval"},
                                    ),
                                )
                            )
                        elif text == "delay":
                            out.append(
                                WebSocketEvent(
                                    "TEXT",
                                    "c:"
                                    + websocket_control_message(
                                        "send-delayed", {"content": "later", "timeout": 0.2}
                                    ),
                                )
                            )
                        elif text.startswith("sub:"):
                            name = text[4:]
                            out.append(
                                WebSocketEvent(
                                    "TEXT",
                                    "c:"
                                    + websocket_control_message("subscribe", {"channel": name}),
                                )
                            )
                            out.append(WebSocketEvent("TEXT", f"subscribed {name}"))
                        elif text.startswith("c:"):
                            pass  # a control event from the edge (resume-failed): recorded only
                        else:
                            out.append(WebSocketEvent("TEXT", e.content))
                    elif e.type == "BINARY":
                        out.append(WebSocketEvent("BINARY", e.content))
                    elif e.type == "CLOSE":
                        out.append(WebSocketEvent("CLOSE", e.content))
                    elif e.type == "PING":
                        out.append(WebSocketEvent("PONG", e.content))
                self._reply(200, headers, encode_websocket_events(out))

            def _reply(self, status, headers, body):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def events(self, type_: str | None = None) -> list:
        with self.lock:
            evs = [e for _, es in self.requests for e in es]
        return [e for e in evs if type_ is None or e[0] == type_]

    def __enter__(self) -> WohOriginApp:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
