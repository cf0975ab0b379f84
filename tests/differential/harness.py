"""Differential tests: one scenario, run against Debian's Pushpin and against gripcast.

A differential test starts each system in turn with the same routes file and the same
pushpin.conf settings, on free ports, in front of one :class:`RecordingOrigin`; it runs the same
scenario against each and keeps what the client saw and what the origin was asked.  It asserts
exact expectations on gripcast's result always, and that Pushpin's result is the same when
Pushpin is installed (``/usr/bin/pushpin``, Debian's ``pushpin`` package, 1.36 here).  When
Pushpin is absent its side is left out cleanly (the session summary says so); the gripcast side
never skips.

Usage (see tests/differential/test_harness_diff.py for complete examples)::

    def test_something(each_system, origin, uniq):
        ch = uniq("a")  # a channel name no other test uses (the systems are shared)
        origin.respond("/stream", OriginResponse(200, [("Grip-Hold", "stream"),
                                                        ("Grip-Channel", ch)], b"start\\n"))
        seen = {}
        for system in each_system(routes=f"* 127.0.0.1:{origin.port}\\n"):
            with HttpClient(system.client_port) as client:
                client.send(b"GET /stream HTTP/1.1\\r\\nHost: example\\r\\n\\r\\n")
                client.read_until(b"start\\n")
                system.publish(ch, {"http-stream": {"content": "hi\\n"}})
                head, body = client.response(until=b"hi\\n")
            seen[system.name] = (head.comparable(), body, origin.take())
        assert seen["gripcast"] == ((200, "OK", ()), b"start\\nhi\\n", [...])
        same_as_pushpin(seen)

``each_system(routes=..., proxy={...}, handler={...}, gripcast={...})`` yields a started
gripcast, then (when installed) a started Pushpin.  ``proxy``/``handler``/``runner`` are
pushpin.conf section overrides: Pushpin gets them in its config file; gripcast gets the keys
whose gripcast name is the same (the ``[proxy]`` keys such as ``auto_cross_origin`` or
``x_forwarded_for``), plus ``gripcast={...}`` as extra TOML keys.

Systems are shared: tests asking for the same configuration get the same running processes
(:class:`SystemPool`), so a test must use channel names of its own (the ``uniq`` fixture) and
leave the systems as it found them; a test that reloads, signals or breaks them asks for
``fresh=True``.  The origin is shared too: the ``origin`` fixture clears its answers and its
record for each test, and the record is cleared before each system is handed out.

Environment: ``GRIPCAST_DIFF_PUSHPIN=0`` leaves the Pushpin side out (scripts/test sets it for
the second, pure-twin pass: Pushpin's answers do not depend on gripcast's twins, and the first
pass compared them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import NotifySocket, free_ports, stop_group
from bench.pushpin import PUSHPIN_BIN, PushpinLaunch, get_ok

REPO = Path(__file__).resolve().parents[2]
# tests whose Pushpin side was left out, for the session summary (tests/differential/conftest.py)
PUSHPIN_LEFT_OUT: list[str] = []


def pushpin_wanted() -> bool:
    return bool(PUSHPIN_BIN) and os.environ.get("GRIPCAST_DIFF_PUSHPIN", "1") != "0"


# -- the origin ------------------------------------------------------------------------------


# request headers that differ between the two systems by nature: the framing, the Grip-Sig token
# (its claims are checked by their own tests), and Grip-Feature (gripcast advertises a superset,
# checked by test_harness_diff.py)
_NATURAL = frozenset(
    ["grip-sig", "grip-feature", "host", "connection", "content-length", "via", "keep-alive"]
)
# what Pushpin's outbound HTTP client (zurl, libcurl) adds when the client did not send them
_ZURL_ADDED = frozenset([("accept", "*/*"), ("accept-encoding", "deflate, gzip, br, zstd")])


@dataclass(frozen=True, slots=True)
class OriginRequest:
    """One request as the origin received it (headers in arrival order, names as sent)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def comparable(self, keep: Iterable[str] | None = None, drop: Iterable[str] = ()) -> tuple:
        """(method, path, headers, body) with header names lowercased and sorted: only the names
        in ``keep`` when given, else all but ``drop`` and the ones that differ by nature
        (``_NATURAL``), and the two headers Pushpin's libcurl adds (``_ZURL_ADDED``)."""
        keep_set = {k.lower() for k in keep} if keep is not None else None
        drop_set = {d.lower() for d in drop} | (_NATURAL if keep_set is None else set())
        hs = sorted(
            (k.lower(), v)
            for k, v in self.headers
            if (keep_set is None or k.lower() in keep_set)
            and k.lower() not in drop_set
            and (k.lower(), v) not in _ZURL_ADDED
        )
        return (self.method, self.path, tuple(hs), self.body)


@dataclass(frozen=True, slots=True)
class OriginResponse:
    status: int = 200
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    reason: str = ""

    def encode(self) -> bytes:
        reason = self.reason or _REASONS.get(self.status, "Unknown")
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        names = {k.lower() for k, _ in self.headers}
        lines += [f"{k}: {v}" for k, v in self.headers]
        if "content-length" not in names and "transfer-encoding" not in names:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


_REASONS = {200: "OK", 204: "No Content", 304: "Not Modified", 404: "Not Found", 500: "Error"}

Handler = Callable[[OriginRequest], OriginResponse]


class RecordingOrigin:
    """An HTTP/1.1 origin on a free 127.0.0.1 port that records every request.

    ``respond(path, response_or_handler)`` sets the answer for a path (without query);
    unknown paths get 404.  ``/__warmup__`` always answers 200 and is not recorded (the
    harness uses it to wait until a system proxies requests).  ``take()`` returns the recorded
    requests and clears them; ``wait_requests(n)`` waits until ``n`` are recorded.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler | OriginResponse] = {}
        self._requests: list[OriginRequest] = []
        self._cond = threading.Condition()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self.port: int = self._sock.getsockname()[1]
        self._closed = False
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def respond(self, path: str, answer: Handler | OriginResponse) -> None:
        self._handlers[path] = answer

    def reset(self) -> None:
        """Forget every answer and every recorded request."""
        self._handlers.clear()
        self.take()

    @property
    def requests(self) -> list[OriginRequest]:
        with self._cond:
            return list(self._requests)

    def take(self) -> list[OriginRequest]:
        with self._cond:
            out, self._requests = self._requests, []
            return out

    def wait_requests(self, n: int, timeout: float = 10.0) -> list[OriginRequest]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"origin saw {len(self._requests)} requests, wanted {n}")
                self._cond.wait(remaining)
            return list(self._requests)

    def drop_connections(self) -> None:
        """End every connection a system has open to this origin (its keep-alive pool must
        connect again)."""
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)  # the serving thread's recv ends; it closes
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        for c in list(self._conns):
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> RecordingOrigin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                req, buf = _read_request(conn, buf)
                if req is None:
                    return
                if req.path.split("?")[0] == "/__warmup__":
                    answer: Handler | OriginResponse = OriginResponse(200, [], b"ok\n")
                elif req.path.split("?")[0] == "/__warmup_hold__":
                    answer = OriginResponse(
                        200,
                        [("Grip-Hold", "stream"), ("Grip-Channel", "__warmup__")],
                        b"held\n",
                    )
                else:
                    with self._cond:
                        self._requests.append(req)
                        self._cond.notify_all()
                    answer = self._handlers.get(
                        req.path.split("?")[0], OriginResponse(404, [], b"no such path\n")
                    )
                resp = answer if isinstance(answer, OriginResponse) else answer(req)
                conn.sendall(resp.encode())
                if (req.header("Connection") or "").lower() == "close":
                    return
        except OSError:
            return
        finally:
            self._conns.discard(conn)
            conn.close()


def _recv_more(conn: socket.socket, buf: bytes) -> bytes:
    data = conn.recv(65536)
    if not data:
        raise EOFError
    return buf + data


def _read_request(conn: socket.socket, buf: bytes) -> tuple[OriginRequest | None, bytes]:
    try:
        while b"\r\n\r\n" not in buf:
            buf = _recv_more(conn, buf)
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = tuple(
            (k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if line)
        )
        req = OriginRequest(method, path, headers, b"")
        body = b""
        if (req.header("Transfer-Encoding") or "").lower() == "chunked":
            while True:
                while b"\r\n" not in buf:
                    buf = _recv_more(conn, buf)
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    buf = _recv_more(conn, buf)
                body, buf = body + buf[:size], buf[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(req.header("Content-Length") or 0)
            while len(buf) < length:
                buf = _recv_more(conn, buf)
            body, buf = buf[:length], buf[length:]
        return OriginRequest(method, path, headers, body), buf
    except EOFError:
        return None, b""


# -- the client side -------------------------------------------------------------------------


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def comparable(self, drop: Iterable[str] = ()) -> tuple:
        """(status, reason, sorted lowercased headers) without ``drop`` and the ones that
        differ by nature (``Date``, ``Server``, framing: ``Content-Length``,
        ``Transfer-Encoding``, ``Connection``, ``Keep-Alive``)."""
        natural = {"date", "server", "content-length", "transfer-encoding", "connection"}
        drop_set = {d.lower() for d in drop} | natural | {"keep-alive"}
        hs = sorted((k.lower(), v) for k, v in self.headers if k.lower() not in drop_set)
        return (self.status, self.reason, tuple(hs))


class HttpClient:
    """A raw TCP client to one port: send bytes, read until a pattern, parse one response."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.data = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, pattern: bytes, timeout: float | None = None) -> bytes:
        """Read until ``pattern`` is in everything received so far; return all of it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while pattern not in self.data:
            if self.closed:
                raise EOFError(f"closed before {pattern!r}; got {self.data!r}")
            self._recv(deadline, pattern)
        return self.data

    def read_to_close(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.closed:
            self._recv(deadline, b"<close>")
        return self.data

    def read_for(self, seconds: float) -> bytes:
        """What arrives within ``seconds`` (for "nothing more came" checks after a positive
        signal that it would have come by then)."""
        deadline = time.monotonic() + seconds
        while not self.closed and (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.data += chunk
        return self.data

    def response(self, until: bytes | None = None, timeout: float | None = None) -> tuple:
        """Parse the first response in the data: wait for its end (Content-Length, the last
        chunk, or close), or only until ``until`` is in its decoded body; returns
        ``(ResponseHead, body)``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            parsed = parse_response(self.data, until=until, closed=self.closed)
            if parsed is not None:
                return parsed
            if self.closed:
                raise EOFError(f"closed mid-response: {self.data!r}")
            self._recv(deadline, until or b"<end of response>")

    def _recv(self, deadline: float, what: bytes) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"did not see {what!r}; got {self.data!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(f"did not see {what!r}; got {self.data!r}") from None
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.data += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_response(
    data: bytes, until: bytes | None = None, closed: bool = False
) -> tuple[ResponseHead, bytes] | None:
    """Parse one HTTP/1.x response from ``data``; None while incomplete.  Chunked bodies are
    decoded; with ``until``, a body containing it counts as complete."""
    if b"\r\n\r\n" not in data:
        return None
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    rh = ResponseHead(int(parts[1]), parts[2] if len(parts) > 2 else "")
    rh.headers = [
        (k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if line)
    ]
    te = (rh.header("Transfer-Encoding") or "").lower()
    if te == "chunked":
        body = b""
        while True:
            if b"\r\n" not in rest:
                break
            size_line, after = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(after) < size + 2:
                break
            body += after[:size]
            rest = after[size + 2 :]
            if size == 0:
                return rh, body
        if until is not None and until in body:
            return rh, body
        return None
    length = rh.header("Content-Length")
    if length is not None:
        n = int(length)
        if len(rest) >= n:
            return rh, rest[:n]
        if until is not None and until in rest:
            return rh, rest
        return None
    if rh.status in (204, 304) or 100 <= rh.status < 200:
        return rh, b""
    if closed or (until is not None and until in rest):
        return rh, rest
    return None


def same_as_pushpin(results: dict[str, Any]) -> None:
    """Assert Pushpin's result equals gripcast's (when Pushpin ran)."""
    if "pushpin" in results:
        assert results["gripcast"] == results["pushpin"], (
            f"gripcast and Pushpin differ:\n gripcast: {results['gripcast']!r}\n"
            f" pushpin:  {results['pushpin']!r}"
        )


# -- the systems -----------------------------------------------------------------------------


class System:
    name = "?"
    proc: subprocess.Popen | None = None
    client_port: int
    publish_url: str
    push_spec: str
    command_spec: str
    log_path: Path

    def publish(self, channel: str, formats: dict, **item: Any) -> None:
        """POST one item (``formats`` plus ``id``/``prev-id``/... from ``item``, ``_`` -> ``-``)
        to the HTTP publish API; raises on a non-2xx answer."""
        body = {"channel": channel, "formats": formats}
        body.update({k.replace("_", "-"): v for k, v in item.items()})
        publish_json(self.publish_url, {"items": [body]})

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears ``count`` times in this system's log (a readiness signal
        for steps the client and origin cannot see, such as Pushpin finishing an update)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                seen = self.log_path.read_text(errors="replace").count(text)
            except OSError:
                seen = 0
            if seen >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} log: {text!r} seen {seen} times, wanted {count}")
            time.sleep(0.02)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None


def publish_json(base_url: str, doc: dict, headers: dict | None = None) -> bytes:
    import json

    req = urllib.request.Request(
        base_url + "/publish/",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _ini_to_toml(key: str, value: str) -> Any:
    """A pushpin.conf ``[proxy]`` value as the gripcast key of the same name takes it."""
    if value in ("true", "false"):
        return value == "true"
    if key in ("x_forwarded_for", "x_forwarded_for_trusted", "orig_headers_need_mark"):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


class GripcastSystem(System):
    """``python -m gripcast run --edges 1`` on free ports, ready when it says READY=1."""

    name = "gripcast"
    KEYS = ("client_port", "push_in_port", "http_port", "sub_in_port", "command_port")
    KEYS_INTERNAL = ("edge_pub_port", "edge_ctl_port")

    def __init__(self, workdir: Path, routes: str, proxy: dict, extra: dict) -> None:
        self.dir = workdir
        ports = dict(zip(self.KEYS + self.KEYS_INTERNAL, free_ports(7)))
        routes_file = workdir / "routes"
        routes_file.write_text(routes)
        conf: dict[str, Any] = {
            "client_addr": "127.0.0.1",
            "routes_file": str(routes_file),
            "edges": 1,
            "log_level": "info",
            "drain_timeout_s": 1.0,
            **ports,
        }
        for k, v in proxy.items():
            conf[k] = _ini_to_toml(k, str(v))
        conf.update(extra)
        self.config = workdir / "gripcast.toml"
        self.config.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in conf.items()))
        self.client_port = ports["client_port"]
        self.publish_url = f"http://127.0.0.1:{ports['http_port']}"
        self.push_spec = f"tcp://127.0.0.1:{ports['push_in_port']}"
        self.command_spec = f"tcp://127.0.0.1:{ports['command_port']}"
        self.log_path = workdir / "gripcast.log"

    def start(self) -> GripcastSystem:
        notify = NotifySocket()
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gripcast", "run", "--config", str(self.config)],
            env=env,
            cwd=str(REPO),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            notify.wait_ready(self.proc, 60)
        except BaseException:
            self.stop()
            raise
        finally:
            notify.close()
        return self


class PushpinSystem(System):
    """Debian's ``pushpin`` (condure, zurl, pushpin-proxy, pushpin-handler) with its own
    config, rundir and free ports, in its own process group (``bench.pushpin.PushpinLaunch``,
    the launcher the bench uses too)."""

    name = "pushpin"

    def __init__(
        self,
        workdir: Path,
        routes: str,
        overrides: dict[str, dict[str, Any]],
        warmup: bool,
    ) -> None:
        self.dir = workdir
        self.launch = PushpinLaunch(workdir, routes, overrides, ipc_prefix=f"diff{os.getpid()}-")
        self.config = self.launch.config
        self.client_port = self.launch.client_port
        self.publish_url = self.launch.publish_url
        self.push_spec = self.launch.push_spec
        self.command_spec = self.launch.command_spec
        self.log_path = workdir / "pushpin.log"
        self.warmup = warmup

    def start(self) -> PushpinSystem:
        # with warmup: zurl's PUB -> proxy SUB link joins late, the first proxied request can
        # be lost
        self.proc = self.launch.start(
            self.log_path, cwd=self.dir, proxied=_proxied if self.warmup else None
        )
        return self


def _proxied(port: int) -> bool:
    # a proxied request (condure -> proxy -> zurl -> origin), then a held one (the proxy's
    # accept hand-off to the handler, "Accept service unavailable" until then)
    return get_ok(port, "/__warmup__", b"ok\n") and get_ok(port, "/__warmup_hold__", b"held\n")


SYSTEMS_KEPT = 3  # configurations kept running between tests (each: a gripcast and a Pushpin)


class SystemPool:
    """The systems of a test session, shared by the tests that ask for the same configuration
    (routes, pushpin.conf overrides, gripcast keys): starting Pushpin and gripcast costs
    seconds, a scenario milliseconds.  The last ``SYSTEMS_KEPT`` configurations stay up;
    ``fresh=True`` gives a test its own systems, stopped when it ends."""

    def __init__(self, tmp_root: Path) -> None:
        self.tmp_root = tmp_root
        self._kept: dict[str, dict[str, System]] = {}  # in least-recently-used order
        self._count = 0

    def get(self, kind: str, key: str, make: Callable[[Path], System]) -> System:
        systems = self._kept.pop(key, None) or {}
        self._kept[key] = systems
        system = systems.get(kind)
        if system is None or system.proc is None or system.proc.poll() is not None:
            self._count += 1
            workdir = self.tmp_root / f"{kind}-{self._count}"
            workdir.mkdir(parents=True)
            system = make(workdir)
            try:
                system.start()
            except BaseException:
                sys.stdout.write(f"--- {kind} log tail ---\n{system.log_tail()}\n")
                raise
            systems[kind] = system
        while len(self._kept) > SYSTEMS_KEPT:
            oldest = next(iter(self._kept))
            for s in self._kept.pop(oldest).values():
                s.stop()
        return system

    def make_fresh(self, kind: str, make: Callable[[Path], System]) -> System:
        self._count += 1
        workdir = self.tmp_root / f"{kind}-{self._count}"
        workdir.mkdir(parents=True)
        system = make(workdir)
        system.start()
        return system

    def stop_all(self) -> None:
        for systems in self._kept.values():
            for s in systems.values():
                s.stop()
        self._kept.clear()


class SystemRunner:
    """Behind the ``each_system`` fixture: hands out a started gripcast, then a started
    Pushpin, with the origin's record cleared before and after each."""

    def __init__(self, pool: SystemPool, origin: RecordingOrigin | None, test_name: str) -> None:
        self.pool = pool
        self.origin = origin
        self.test_name = test_name
        self.used: list[System] = []
        self.fresh: list[System] = []

    def __call__(
        self,
        routes: str,
        proxy: dict[str, Any] | None = None,
        handler: dict[str, Any] | None = None,
        runner: dict[str, Any] | None = None,
        gripcast: dict[str, Any] | None = None,
        warmup: bool = True,
        pushpin: bool = True,
        fresh: bool = False,
    ) -> Iterator[System]:
        """Yield gripcast, then Pushpin (when installed and ``pushpin``), both started with
        ``routes`` (the routes file's text) and the settings.  ``fresh=True``: systems of this
        test's own (for tests that reload, signal or break them), stopped when it ends."""
        proxy = dict(proxy or {})
        overrides = {
            "proxy": proxy,
            "handler": dict(handler or {}),
            "runner": dict(runner or {}),
        }
        key = repr((routes, sorted(overrides.items()), sorted((gripcast or {}).items()), warmup))
        kinds = ["gripcast"]
        if pushpin and pushpin_wanted():
            kinds.append("pushpin")
        elif pushpin:
            PUSHPIN_LEFT_OUT.append(self.test_name)
        for kind in kinds:

            def make(workdir: Path, kind: str = kind) -> System:
                if kind == "gripcast":
                    return GripcastSystem(workdir, routes, proxy, dict(gripcast or {}))
                return PushpinSystem(workdir, routes, overrides, warmup)

            if fresh:
                system = self.pool.make_fresh(kind, make)
                self.fresh.append(system)
            else:
                system = self.pool.get(kind, key, make)
            self.used.append(system)
            if self.origin is not None:
                self.origin.take()
            sys.stdout.write(f"=== now on {system.name} ({system.log_path})\n")
            yield system
            if self.origin is not None:
                self.origin.take()

    def finish(self, failed: bool) -> None:
        """Stop this test's fresh systems; print the log tails of every system it used
        (pytest shows them only when the test failed)."""
        for s in self.fresh:
            s.stop()
        if failed:
            for s in self.used:
                sys.stdout.write(f"--- {s.name} log tail ({s.log_path}) ---\n{s.log_tail()}\n")


def open_ws(system: System, origin: RecordingOrigin | None, path: str, **kw: Any) -> socket.socket:
    """``tests.integration.wsraw.raw_ws`` to ``system``.  Pushpin's outbound client (zurl)
    now and then fails a WebSocket-over-HTTP OPEN on a pooled origin connection
    (``OUT ERR condition=undefined-condition`` in its log, 502 to the client): that attempt is
    retried once, with the origin's record of it dropped; gripcast gets no second chance."""
    from tests.integration.wsraw import raw_ws

    try:
        return raw_ws(system.client_port, path, **kw)
    except AssertionError as exc:
        if system.name != "pushpin" or "502" not in str(exc):
            raise
        if "OUT ERR" not in system.log_tail(200):
            raise
    if origin is not None:
        origin.take()
    return raw_ws(system.client_port, path, **kw)
