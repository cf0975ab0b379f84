"""Processes: free ports, sd_notify readiness, process trees and their RSS / CPU from /proc.

Everything here reads Linux's /proc directly (no psutil): ``VmRSS`` from ``status`` and
``utime + stime`` from ``stat``, for a process and all its descendants.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


# Ports handed out by ``free_ports``: below Linux's ephemeral range (32768-60999 by default), so
# an outgoing connection of another process never takes one between our pick and the child's
# bind, and above ``free_port_block`` (10000-21000).  Parallel runs (two test passes side
# by side) reserve each port in a shared directory for PORT_RESERVE_S so they never pick the
# same one; a reservation older than that is taken over.
PORT_RANGE = (21000, 32768)
PORT_RESERVE_DIR = os.path.join(tempfile.gettempdir(), "gripcast-ports")
PORT_RESERVE_S = 120.0


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def reserve_port(port: int, now: float | None = None) -> bool:
    """Claim ``port`` for this process across processes (False: another holds it)."""
    os.makedirs(PORT_RESERVE_DIR, mode=0o1777, exist_ok=True)
    path = os.path.join(PORT_RESERVE_DIR, str(port))
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return True
        except FileExistsError:
            try:
                age = (time.time() if now is None else now) - os.stat(path).st_mtime
                if age < PORT_RESERVE_S:
                    return False
                os.unlink(path)  # stale: take it over
            except FileNotFoundError:
                pass
    return False


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports, free on 127.0.0.1 a moment ago and reserved for this process
    (see PORT_RANGE)."""
    import random

    low, high = PORT_RANGE
    high = min(high, _ephemeral_low())
    got: list[int] = []
    for _ in range(50 * n + 1000):
        if len(got) == n:
            return got
        port = random.randrange(low, high)
        if port not in got and _bindable(port) and reserve_port(port):
            got.append(port)
    if len(got) == n:
        return got
    raise RuntimeError(f"no {n} free ports in {low}-{high}")


def free_port_block(n: int, low: int = 10000, high: int = 21000) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (for ``base + index`` schemes),
    below ``free_ports``' range and the ephemeral range, each reserved across processes as
    ``free_ports`` does (``reserve_port``)."""
    import random

    for _ in range(200):
        base = random.randrange(low, high - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        if all(reserve_port(p) for p in range(base, base + n)):
            return base
    raise RuntimeError("no free port block")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: always leaves ``proc`` reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def raise_nofile() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class NotifySocket:
    """A unix datagram socket playing systemd's NOTIFY_SOCKET for one child process."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-notify-")
        self.path = os.path.join(self._dir.name, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_ready(self, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("process did not report READY=1 in time")
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with code {proc.returncode} before READY=1")
            self.sock.settimeout(min(remaining, 0.2))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in data.split(b"\n"):
                return

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} before port {port} opened"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} did not open in {timeout:.0f}s") from None
            time.sleep(0.05)


def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM ``proc`` (started with start_new_session=True), wait, then SIGKILL its whole group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers in the group we created
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(5)
    return proc.returncode


# --- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    # comm may contain spaces and parens: split after the last ')'
    rparen = data.rindex(")")
    return [data[data.index("(") + 1 : rparen]] + data[rparen + 2 :].split()


def _thread_ids(pid: int) -> list[int]:
    """Every thread id of ``pid`` (its own pid first); just ``[pid]`` if it is gone."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]
    return [pid] + [t for t in tids if t != pid]


def _task_children(pid: int) -> list[int] | None:
    """Children of every thread of ``pid`` from ``/proc/<pid>/task/<tid>/children`` (a process
    started from a worker thread, as trio's ``open_process`` does, is listed under that
    thread only); None where the kernel has no such file (CONFIG_PROC_CHILDREN off)."""
    out: list[int] = []
    for tid in _thread_ids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return out


def _ppid_index() -> dict[int, list[int]]:
    """{parent pid: [child pids]} from one scan of /proc (``ppid`` of every process)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is None:
            continue
        children.setdefault(int(f[2]), []).append(int(name))  # f[2] = ppid
    return children


def descendants(root: int) -> list[int]:
    """``root`` and every live descendant of it: the children of every thread of every process
    in the tree.  Uses ``/proc/<pid>/task/<tid>/children`` where the kernel has it, else one
    scan of every process's ``ppid`` (keyed by each thread id of a parent as well as by its
    pid, so a child whose parent is reported as a thread is found either way)."""
    index: dict[int, list[int]] | None = None
    out: list[int] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen or not os.path.exists(f"/proc/{pid}"):
            continue
        seen.add(pid)
        out.append(pid)
        kids = _task_children(pid)
        if kids is None:
            if index is None:
                index = _ppid_index()
            kids = [k for tid in _thread_ids(pid) for k in index.get(tid, ())]
        todo.extend(kids)
    return out


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid`` (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 if it is gone)."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    return (int(f[12]) + int(f[13])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def proc_name(pid: int) -> str:
    """A short readable name: gripcast role (``broker``, ``edge0``, ``run``) or the comm."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    f = _stat_fields(pid)
    comm = f[0] if f else "?"
    if "-m" in argv and "gripcast" in argv:
        i = argv.index("gripcast")
        role = argv[i + 1] if i + 1 < len(argv) else "gripcast"
        if role == "edge" and "--index" in argv:
            role += argv[argv.index("--index") + 1]
        return role
    return comm


@dataclass(frozen=True, slots=True)
class ProcSample:
    pid: int
    name: str
    rss_kib: int
    cpu_s: float


def sample(pids: list[int]) -> dict[int, ProcSample]:
    return {p: ProcSample(p, proc_name(p), rss_kib(p), cpu_s(p)) for p in pids}


def sample_tree(root: int) -> dict[int, ProcSample]:
    return sample(descendants(root))


def cpu_delta(
    before: dict[int, ProcSample], after: dict[int, ProcSample], wall_s: float, role: str
) -> list[dict]:
    """Per-process CPU seconds between two samples (processes present in ``after``)."""
    rows = []
    for pid, a in after.items():
        b = before.get(pid)
        used = a.cpu_s - (b.cpu_s if b else 0.0)
        rows.append(
            {
                "role": role,
                "name": a.name,
                "pid": pid,
                "cpu_s": round(used, 3),
                "cpu_util": round(used / wall_s, 3) if wall_s > 0 else None,
                "rss_kib": a.rss_kib,
                "new": b is None,
            }
        )
    return sorted(rows, key=lambda r: -r["cpu_s"])
