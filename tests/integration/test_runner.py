"""``gripcast run`` as a new user meets it: mistakes end the start at once with the reason,
a second cluster is refused, Ctrl-C stops everything cleanly, crashes are restarted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import free_ports, wait_for
from tests.integration.cluster import PORT_KEYS, Proc, gripcast, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


class Runner:
    """``gripcast run`` in its own process group, with its merged log collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            gripcast("run", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 30.0) -> None:
        wait_for(
            lambda: re.search(pattern, self.text, re.M),
            timeout,
            f"no line matching {pattern!r} in:\n{self.text}",
        )

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def config(tmp_path, routes=("* 127.0.0.1:1",), **extra) -> str:
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS))))
    return write_config(tmp_path / "gripcast.toml", ports, list(routes), **extra)


def test_bad_route_ends_the_start_at_once(tmp_path):
    r = Runner("--config", config(tmp_path), "--edges", "1", "--route", "garbage-no-target")
    try:
        assert r.wait_exit(20) == 78
        assert "routes line 1: no targets" in r.text
        assert "started broker" not in r.text and "restarting" not in r.text
    finally:
        r.close()


def test_missing_routes_file_ends_the_start_at_once(tmp_path):
    r = Runner("--config", config(tmp_path), "--routes-file", str(tmp_path / "nope"))
    try:
        assert r.wait_exit(20) == 78
        assert f"cannot read {tmp_path / 'nope'}" in r.text and "started broker" not in r.text
    finally:
        r.close()


def test_busy_port_is_named(tmp_path):
    cfg = config(tmp_path)
    port = int(re.search(r"push_in_port = (\d+)", Path(cfg).read_text()).group(1))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        r = Runner("--config", cfg, "--edges", "1")
        try:
            assert r.wait_exit(20) == 78
            assert f"port {port} is in use (another gripcast or Pushpin?)" in r.text
            assert "started broker" not in r.text
        finally:
            r.close()


def test_second_run_on_the_same_ports_is_refused(tmp_path):
    cfg = config(tmp_path)
    first = Runner("--config", cfg, "--edges", "1")
    try:
        first.wait_line(r"gripcast is ready")
        second = Runner("--config", cfg, "--edges", "1")
        try:
            assert second.wait_exit(20) == 78
            client_port = re.search(r"client_port = (\d+)", Path(cfg).read_text()).group(1)
            assert f"port {client_port} is in use" in second.text
        finally:
            second.close()
        assert first.proc.poll() is None  # the first cluster is untouched
    finally:
        first.close()


def test_child_config_error_is_not_restarted(tmp_path):
    # passes the runner's checks, but the edges cannot load their Grip-Sig key
    cfg = config(tmp_path, sig_key=f"file:{tmp_path / 'missing.key'}")
    r = Runner("--config", cfg, "--edges", "1")
    try:
        assert r.wait_exit(30) == 78
        assert "configuration error" in r.text and "not restarting" in r.text
        assert "restarting in" not in r.text
    finally:
        r.close()


@pytest.mark.parametrize("how", ["group", "runner", "sigterm"])
def test_ctrl_c_and_sigterm_stop_everything_cleanly(tmp_path, how):
    demo_port = free_ports(1)[0]
    r = Runner(
        "--config",
        config(tmp_path, routes=()),
        "--edges",
        "2",
        "--demo",
        "--demo-port",
        str(demo_port),
    )
    try:
        r.wait_line(r"^=+$\n\Z|Ctrl-C stops everything")
        if how == "group":
            os.killpg(r.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal
        elif how == "runner":
            r.proc.send_signal(signal.SIGINT)
        else:
            r.proc.send_signal(signal.SIGTERM)
        assert r.wait_exit(30) == 0, r.text
        stopped = re.findall(r"gripcast\.runner: (\w+) stopped$", r.text, re.M)
        assert sorted(stopped) == ["broker", "demo", "edge0", "edge1"], r.text
        assert "code=" not in r.text.split("stopping all children")[-1], r.text
        with pytest.raises(ProcessLookupError):
            os.killpg(r.proc.pid, 0)  # nothing of the group is left
    finally:
        r.close()


def test_banner_is_last_and_names_the_commands(tmp_path):
    demo_port = free_ports(1)[0]
    r = Runner(
        "--config",
        config(tmp_path, routes=()),
        "--edges",
        "1",
        "--demo",
        "--demo-port",
        str(demo_port),
    )
    try:
        r.wait_line(r"Ctrl-C stops everything")
        time.sleep(0)  # (the banner lines come in one write)
        text = r.text
        assert re.search(r"curl -N http://127\.0\.0\.1:\d+/stream", text)
        assert re.search(r"^\s+\S*gripcast publish test hello$", text, re.M)
    finally:
        r.close()


def test_crashed_child_is_restarted(tmp_path):
    r = Runner("--config", config(tmp_path), "--edges", "1")
    try:
        r.wait_line(r"gripcast is ready")
        pid = int(re.search(r"started edge0 pid=(\d+)", r.text).group(1))
        os.kill(pid, signal.SIGKILL)
        r.wait_line(r"edge0 exited unexpectedly code=-9; restarting in 1s \(restart #1\)")
        r.wait_line(rf"started edge0 pid=(?!{pid}\b)\d+")
        r.proc.send_signal(signal.SIGINT)
        assert r.wait_exit(30) == 0
    finally:
        r.close()


def test_edge_refuses_a_broker_of_another_cluster(tmp_path):
    cfg = config(tmp_path, cluster_id="cluster-a")
    broker = Proc(gripcast("broker", "--config", cfg)).wait_ready()
    try:
        edge = subprocess.run(
            gripcast("edge", "--config", cfg, "--index", "0"),
            env=dict(os.environ, GRIPCAST_CLUSTER_ID="cluster-b"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert edge.returncode == 78, edge.stderr
        assert "belongs to another cluster" in edge.stderr
        assert "'cluster-a'" in edge.stderr and "'cluster-b'" in edge.stderr
    finally:
        broker.stop()


def test_no_secret_on_any_command_line(tmp_path):
    """Security issue item 7: /proc/<pid>/cmdline is readable by every local user."""
    secret_sig, secret_pub = "sig-" + "s" * 40, "pub-" + "p" * 40
    r = Runner(
        "--config", config(tmp_path, sig_key=secret_sig, publish_jwt_key=secret_pub), "--edges", "1"
    )
    try:
        r.wait_line(r"gripcast is ready")
        pids = [int(p) for p in re.findall(r"started \w+ pid=(\d+)", r.text)] + [r.proc.pid]
        assert len(pids) == 3
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            assert secret_sig.encode() not in cmdline and secret_pub.encode() not in cmdline
            assert b"--config-file" in cmdline or pid == r.proc.pid
    finally:
        r.close()
