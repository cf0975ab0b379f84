"""Debian's Pushpin (condure, zurl, pushpin-proxy, pushpin-handler) with its own pushpin.conf,
rundir, logdir and free ports, in its own process group: the one launcher behind the bench's
``PushpinTarget`` (bench/targets.py) and the differential tests' ``PushpinSystem``
(tests/differential/harness.py).

``PushpinLaunch(workdir, routes, overrides, ipc_prefix=...)`` chooses the ports (client, push,
HTTP publish, SUB, command: five free ports, in that order; an HTTPS port after them with
``https``), writes ``routes``, ``run/``, ``log/`` and ``pushpin.conf`` (``PUSHPIN_SECTIONS`` with
the overrides) in ``workdir``; ``start(...)`` runs ``pushpin --config ... --merge-output`` and
waits until it is ready: its ports accept, its publish API answers an empty publish, and (with
``proxied``) a request through the proxy reached the origin, since zurl's PUB -> proxy SUB link
joins late and the first proxied request can be lost.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import free_ports, stop_group, wait_port

PUSHPIN_BIN = shutil.which("pushpin") or ""

# pushpin.conf as both users start from: sections in file order, keys in section order ("" =
# filled in by PushpinLaunch); callers override per section
PUSHPIN_SECTIONS: dict[str, dict[str, str]] = {
    "global": {
        "include": "{libdir}/internal.conf",
        "rundir": "",  # filled in
        "ipc_prefix": "",  # filled in
        "port_offset": "0",
        "stats_connection_ttl": "120",
    },
    "runner": {
        "services": "condure,zurl,pushpin-proxy,pushpin-handler",
        "http_port": "",  # filled in
        "logdir": "",  # filled in
        "log_level": "2",
        "client_buffer_size": "8192",
        "client_maxconn": "50000",
        "condure_bin": "condure",
        "zurl_bin": "zurl",
    },
    "proxy": {
        # outbound requests go through our own zurl on our own rundir
        "zurl_out_specs": "ipc://{rundir}/{ipc_prefix}zurl-in",
        "zurl_out_stream_specs": "ipc://{rundir}/{ipc_prefix}zurl-in-stream",
        "zurl_in_specs": "ipc://{rundir}/{ipc_prefix}zurl-out",
        "routesfile": "",  # filled in
        "debug": "false",
        "auto_cross_origin": "false",
        "accept_x_forwarded_protocol": "false",
        "set_x_forwarded_protocol": "proto-only",
        "x_forwarded_for": "",
        "x_forwarded_for_trusted": "",
        "orig_headers_need_mark": "",
        "accept_pushpin_route": "false",
        "log_from": "false",
        "log_user_agent": "false",
        "sig_iss": "pushpin",
        "sig_key": "changeme",
        "upstream_key": "",
        "updates_check": "off",
        "organization_name": "",
    },
    "handler": {
        "push_in_spec": "",  # filled in
        "push_in_sub_specs": "",
        "push_in_sub_connect": "false",
        "push_in_http_addr": "127.0.0.1",
        "push_in_http_port": "",
        "push_in_http_max_headers_size": "10000",
        "push_in_http_max_body_size": "1000000",
        "stats_spec": "ipc://{rundir}/{ipc_prefix}stats",
        "command_spec": "",
        "message_rate": "2500",
        "message_hwm": "25000",
        "message_wait": "5000",
        "id_cache_ttl": "60",
        "connection_subscription_max": "20",
        "subscription_linger": "60",
        "stats_subscription_ttl": "60",
        "stats_report_interval": "10",
        "stats_format": "tnetstring",
    },
}


def ini_str(v: Any) -> str:
    """A pushpin.conf value: booleans as true/false, lists comma-separated."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    return str(v)


def conf_text(
    overrides: dict[str, dict[str, Any]], base: dict[str, dict[str, str]] | None = None
) -> str:
    """pushpin.conf's text: ``base`` (``PUSHPIN_SECTIONS``) with ``overrides`` per section (a
    key already there keeps its place; a new one goes at the end of its section)."""
    sections = {name: dict(values) for name, values in (base or PUSHPIN_SECTIONS).items()}
    for section, values in overrides.items():
        for k, v in values.items():
            sections.setdefault(section, {})[k] = ini_str(v)
    return "".join(
        f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in values.items()) + "\n"
        for name, values in sections.items()
    )


def poll_until(
    check: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen | None,
    what: str,
    who: str = "pushpin",
) -> None:
    """Call ``check`` every 0.1 s until it returns True (an OSError counts as not yet); raise
    when ``proc`` exits first or ``timeout`` passes (``what``: the message)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{who} exited with code {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} in {timeout:.0f}s")
        time.sleep(0.1)


def wait_publish_ready(
    publish_url: str,
    timeout: float,
    proc: subprocess.Popen | None,
    request_timeout: float = 10.0,
    who: str = "pushpin",
) -> None:
    """Wait until ``publish_url``/publish/ accepts an empty publish (the handler binds its
    publish port before the proxy is wired to it)."""

    def check() -> bool:
        req = urllib.request.Request(
            publish_url + "/publish/",
            data=json.dumps({"items": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=request_timeout) as resp:
            resp.read()
        return True

    poll_until(check, timeout, proc, f"{publish_url} did not answer", who)


def get_ok(port: int, path: str, body: bytes, timeout: float = 2.0) -> bool:
    """GET ``path`` on 127.0.0.1:``port``: True when it answers 200 and ``body`` arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: warmup\r\n\r\n".encode())
        s.settimeout(timeout)
        data = b""
        while body not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"HTTP/1.1 200") and body in data


def port_sections(
    *,
    rundir: Path | str,
    logdir: Path | str,
    ipc_prefix: str,
    client_port: int,
    routes: Path | str,
    push_port: int,
    sub_port: int,
    http_port: int,
    command_port: int,
    https_port: int = 0,
) -> dict[str, dict[str, Any]]:
    """The pushpin.conf keys one Pushpin's own directories and ports fill in (overrides for
    ``conf_text``)."""
    sections: dict[str, dict[str, Any]] = {
        "global": {"rundir": rundir, "ipc_prefix": ipc_prefix},
        "runner": {"http_port": client_port, "logdir": logdir},
        "proxy": {"routesfile": routes},
        "handler": {
            "push_in_spec": f"tcp://127.0.0.1:{push_port}",
            "push_in_sub_specs": f"tcp://127.0.0.1:{sub_port}",
            "push_in_http_port": http_port,
            "command_spec": f"tcp://127.0.0.1:{command_port}",
        },
    }
    if https_port:
        # Pushpin's --port replaces every listener (HTTPS too): with TLS the HTTP port is
        # given in the config instead, with its address
        sections["runner"]["http_port"] = f"127.0.0.1:{client_port}"
        sections["runner"]["https_ports"] = f"127.0.0.1:{https_port}"
    return sections


class PushpinLaunch:
    """One Pushpin: its files written at construction, started by ``start``, stopped by PID."""

    def __init__(
        self,
        workdir: Path,
        routes: str,
        overrides: dict[str, dict[str, Any]],
        *,
        ipc_prefix: str,
        https: bool = False,
        base: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.dir = Path(workdir)
        self.client_port, push, http, sub, command = free_ports(5)
        self.https_port = 0
        if https:
            self.https_port = free_ports(1)[0]
        (self.dir / "run").mkdir(exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        self.routes_file = self.dir / "routes"
        self.routes_file.write_text(routes)
        filled = port_sections(
            rundir=self.dir / "run",
            logdir=self.dir / "log",
            ipc_prefix=ipc_prefix,
            client_port=self.client_port,
            https_port=self.https_port,
            routes=self.routes_file,
            push_port=push,
            sub_port=sub,
            http_port=http,
            command_port=command,
        )
        for section, values in overrides.items():
            filled.setdefault(section, {}).update(values)
        self.config = self.dir / "pushpin.conf"
        self.config.write_text(conf_text(filled, base))
        self.publish_url = f"http://127.0.0.1:{http}"
        self.publish_port = http
        self.push_spec = f"tcp://127.0.0.1:{push}"
        self.command_spec = f"tcp://127.0.0.1:{command}"
        self.proc: subprocess.Popen | None = None

    def start(
        self,
        log_path: Path,
        *,
        port_flag: bool = False,
        cwd: Path | None = None,
        wait_ports: bool = False,
        publish_request_timeout: float = 10.0,
        proxied: Callable[[int], bool] | None = None,
        who: str = "pushpin",
        timeout: float = 30.0,
    ) -> subprocess.Popen:
        """Start Pushpin (its output appended to ``log_path``) and wait until it is ready:
        the client port accepts (``wait_ports``: the HTTPS and publish ports too), the publish
        API answers, and ``proxied(client_port)`` returns True (each step within ``timeout``).
        ``port_flag``: ``--port 127.0.0.1:<client>`` on the command line (not with HTTPS).
        Stops it and raises when it is not ready in time."""
        log = open(log_path, "ab")
        argv = [PUSHPIN_BIN or "pushpin", "--config", str(self.config)]
        if port_flag and not self.https_port:
            argv += ["--port", f"127.0.0.1:{self.client_port}"]
        try:
            self.proc = subprocess.Popen(
                [*argv, "--merge-output"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(cwd) if cwd is not None else None,
            )
        finally:
            log.close()  # the child holds its own copy
        proc = self.proc
        try:
            wait_port(self.client_port, timeout, proc)
            if wait_ports:
                if self.https_port:
                    wait_port(self.https_port, timeout, proc)
                wait_port(self.publish_port, timeout, proc)
            wait_publish_ready(self.publish_url, timeout, proc, publish_request_timeout, who)
            if proxied is not None:
                client = self.client_port
                poll_until(
                    lambda: proxied(client),
                    timeout,
                    proc,
                    "no proxied request succeeded",
                    who,
                )
        except BaseException:
            self.stop()
            raise
        return proc

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
