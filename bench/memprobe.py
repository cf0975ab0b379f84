"""Memory per idle held connection on ONE edge, piece by piece (issue 16).

    python -m bench.memprobe --clients 4000 --transport sse            # edge RSS/PSS delta
    python -m bench.memprobe --clients 4000 --transport ws --trace     # + tracemalloc, types

A gripcast cluster of one edge (``gripcast run --edges 1``) behind the bench origin
(``bench.origin``, ``Grip-Keep-Alive`` every ``--keep-alive`` s), and ``--clients`` raw
sockets from this process: each sends one SSE request (``/sse/<ch>``) or a WebSocket upgrade
(``/ws/<ch>``, WebSocket-over-HTTP), reads the response head and then stays idle.  A warm-up
of ``--warm`` clients connects and leaves first (imports, caches, pools).  The figure is the
edge's RSS (and PSS, ``/proc/<pid>/smaps_rollup``) after minus before, per held connection.

With ``--trace`` the cluster runs with a ``sitecustomize`` (in a
directory of the run, first on ``PYTHONPATH``) that, on SIGUSR1, starts tracemalloc (the first time) or writes the process's
tracemalloc snapshot and a census of live objects by type (count, ``sys.getsizeof`` sum) to
``<dir>/<pid>.{snap,types.json}``; the probe asks the edge for one before and one after
connecting and prints the differences per connection: by type, and by allocating line.
(tracemalloc costs memory of its own: the RSS figure of a ``--trace`` run is not the edge's.)

Bench only: nothing here is imported by the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.origin import Origin
from bench.procs import raise_nofile, rss_kib
from bench.targets import GripcastTarget

_SITECUSTOMIZE = """
import gc, json, os, signal, sys, tracemalloc

def _census(signum, frame):
    out = os.environ["MEMPROBE_DIR"]
    pid = os.getpid()
    if not tracemalloc.is_tracing():  # the first signal starts tracing (startup stays fast)
        tracemalloc.start(8)
        with open(f"{out}/{pid}.done", "w") as fh:
            fh.write("1")
        return
    gc.collect()
    types = {}
    for o in gc.get_objects():
        t = type(o)
        name = f"{t.__module__}.{t.__qualname__}"
        e = types.get(name)
        if e is None:
            e = types[name] = [0, 0]
        e[0] += 1
        try:
            e[1] += sys.getsizeof(o)
        except Exception:
            pass
    with open(f"{out}/{pid}.types.json", "w") as fh:
        json.dump(types, fh)
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(f"{out}/{pid}.snap")
    with open(f"{out}/{pid}.done", "w") as fh:
        fh.write("1")

signal.signal(signal.SIGUSR1, _census)
"""


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def request(transport: str, i: int) -> bytes:
    ch = f"mp{i % 10}"
    if transport == "sse":
        return (
            f"GET /sse/{ch} HTTP/1.1\r\nHost: probe\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
    return (
        f"GET /ws/{ch} HTTP/1.1\r\nHost: probe\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def connect(port: int, transport: str, n: int, start: int = 0) -> list[socket.socket]:
    """``n`` clients, each held once its response head (and the first bytes) came back."""
    socks: list[socket.socket] = []
    batch = 200
    for b in range(0, n, batch):
        group = []
        for i in range(b, min(n, b + batch)):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request(transport, start + i))
            group.append(s)
        for s in group:
            s.settimeout(30)
            got = b""
            while b"\r\n\r\n" not in got:
                data = s.recv(4096)
                if not data:
                    raise RuntimeError(f"connection closed before its head: {got[:200]!r}")
                got += data
            status = got.split(b" ", 2)[1]
            if status not in (b"200", b"101"):
                raise RuntimeError(f"unexpected answer {got[:200]!r}")
            s.setblocking(False)
        socks += group
    return socks


def edge_pid(target: GripcastTarget) -> int:
    pids = target.edge_pids()
    if len(pids) != 1:
        raise RuntimeError(f"expected one edge process, found {pids}")
    return pids[0]


def census(pid: int, where: Path) -> tuple[dict, tracemalloc.Snapshot | None]:
    done = where / f"{pid}.done"
    done.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the edge wrote no census")
        time.sleep(0.1)
    snap = where / f"{pid}.snap"
    if not (where / f"{pid}.types.json").exists():
        return {}, None
    types = json.loads((where / f"{pid}.types.json").read_text())
    return types, tracemalloc.Snapshot.load(str(snap)) if snap.exists() else None


def settle(pid: int, seconds: float = 2.0) -> tuple[int, int]:
    time.sleep(seconds)
    return rss_kib(pid), pss_kib(pid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.memprobe", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--clients", type=int, default=4000)
    ap.add_argument("--transport", choices=("sse", "ws"), default="sse")
    ap.add_argument("--warm", type=int, default=300, help="warm-up clients (connect, leave)")
    ap.add_argument("--keep-alive", type=int, default=20, help="origin Grip-Keep-Alive s")
    ap.add_argument("--trace", action="store_true", help="tracemalloc + type census (slow)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="memprobe-"))
    env = {"MEMPROBE_DIR": str(work)}
    if args.trace:
        site = work / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
    origin = Origin(keep_alive=args.keep_alive).start()
    target = GripcastTarget(origin.port, 1, str(work), env=env, stats=False)
    out: dict = {"clients": args.clients, "transport": args.transport}
    try:
        try:
            target.start()
        except Exception:
            print(target.log_tail(40), file=sys.stderr)
            raise
        pid = edge_pid(target)
        warm = connect(target.client_port, args.transport, args.warm)
        time.sleep(1.0)
        for s in warm:
            s.close()
        if args.trace:
            census(pid, work)  # starts tracing
        rss0, pss0 = settle(pid, 3.0)
        before = census(pid, work) if args.trace else None
        t0 = time.monotonic()
        socks = connect(target.client_port, args.transport, args.clients, args.warm)
        out["connect_s"] = round(time.monotonic() - t0, 2)
        rss1, pss1 = settle(pid, 3.0)
        n = len(socks)
        out.update(
            rss_before_kib=rss0,
            rss_after_kib=rss1,
            pss_before_kib=pss0,
            pss_after_kib=pss1,
            rss_per_conn_kb=round((rss1 - rss0) * 1024 / n / 1000, 3),
            rss_per_conn_kib=round((rss1 - rss0) / n, 3),
            pss_per_conn_kib=round((pss1 - pss0) / n, 3),
        )
        print(
            f"{args.transport}: {n} held; edge RSS {rss0} -> {rss1} KiB "
            f"({out['rss_per_conn_kib']} KiB/conn), PSS {pss0} -> {pss1} KiB "
            f"({out['pss_per_conn_kib']} KiB/conn)"
        )
        if before is not None:
            after = census(pid, work)
            out["types"] = report_types(before[0], after[0], n, args.top)
            if before[1] is not None and after[1] is not None:
                out["lines"] = report_lines(before[1], after[1], n, args.top)
        dead = sum(1 for s in socks if _closed(s))
        if dead:
            print(f"warning: {dead} clients were closed by the edge meanwhile")
        for s in socks:
            s.close()
    finally:
        target.stop()
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _closed(s: socket.socket) -> bool:
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def report_types(before: dict, after: dict, n: int, top: int) -> list:
    rows = []
    for name, (count, size) in after.items():
        c0, s0 = before.get(name, (0, 0))
        if size - s0 > 0 or count - c0 > 0:
            rows.append((name, (count - c0) / n, (size - s0) / n))
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows if r[2] > 0)
    print(f"\nlive objects (gc-tracked) per held connection, by type: {total:.0f} B (getsizeof)")
    for name, c, b in rows[:top]:
        print(f"  {b:8.1f} B  {c:6.2f} x  {name}")
    return [{"type": r[0], "count": round(r[1], 3), "bytes": round(r[2], 1)} for r in rows[:top]]


def report_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int):
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"\ntracemalloc per held connection: {total / n:.0f} B, by allocating line")
    rows = []
    for s in stats[:top]:
        fr = s.traceback[0]
        where = f"{Path(fr.filename).name}:{fr.lineno}"
        print(f"  {s.size_diff / n:8.1f} B  {s.count_diff / n:6.2f} blocks  {where}")
        rows.append({"where": where, "bytes": round(s.size_diff / n, 1)})
    stats = after.compare_to(before, "traceback")
    print("\nlargest by traceback (innermost first, 4 frames):")
    for s in stats[:10]:
        frames = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno}" for f in list(s.traceback)[::-1][:4]
        )
        print(f"  {s.size_diff / n:8.1f} B  {frames}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
