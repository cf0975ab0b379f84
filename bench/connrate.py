"""New held connections per second, and what each costs every process (issue 16).

``python -m bench connrate`` opens ``--conns`` HTTP stream connections (``GET /stream/<ch>``
over ``--channels`` channels) as fast as ``--procs`` client processes can, keeps every one of
them open until all are established (the held count rises to ``--conns``, as in the "new
connections/s to 10,000" target), then closes them all; ``--repeat`` rounds on the same
target.  A connection counts once the stream's head and the origin's first line (``[open]``)
arrived.

The clients are plain non-blocking sockets on one ``epoll`` per process with at most
``--window`` connections in flight each, a few microseconds of Python per connection
(``--client python``, the default), or ``--client c``: as many copies of ``bench/connload.c``
in ``--hold`` mode (one epoll loop in C, the same requests, windows and source addresses;
each copy spreads its own connections over the channels from ``cr0``), so that the load
generator takes less of the shared machine, as the issue's independent C client did.  CPU is
read from /proc for every server process (gripcast: broker and edges; Pushpin: condure, proxy,
handler, zurl), for the bench origin (``bench.origin``, one asyncio process: a slow origin
limits both targets; ``--origin c``: ``bench.corigin``, the same answers from C, half its
CPU a request) and for the clients, over the connect phase, minus each process's idle
rate measured just before.  The figures to read are the server CPU per connection (it does not
depend on how busy the shared machine is) beside the rate.

``--warmup-rounds N`` runs N more rounds first on each target, the same connections, not
counted: a fresh process's first 10,000 connections grow its memory (on this machine a
gripcast edge's first round is 15-25% slower at the same CPU a connection), so the counted
rounds show a server that has served such a burst before.  Both targets get the same.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import select
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass

from bench import connfloor, connload, corigin, procs
from bench.corigin import COrigin
from bench.origin import Origin
from bench.report import save_results
from bench.swarm import IP_BIND_ADDRESS_NO_PORT, apply_sched
from bench.targets import make_target, warm_up

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
STALL_S = 30.0  # no connection progressed this long: the ones in flight count as failed

# ``--headers``: what each request carries after ``Host``.  "minimal" is the C client the
# issue's figures came from; "browser" is what Chrome sends for an ``EventSource`` on a page
# of the same site (15 headers, ~700 bytes with a session cookie), as real apps' clients do.
HEADER_SETS: dict[str, bytes] = {
    "minimal": b"",
    "browser": (
        b"Connection: keep-alive\r\n"
        b"Accept: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/131.0.0.0 Safari/537.36\r\n"
        b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\n'
        b"sec-ch-ua-mobile: ?0\r\n"
        b'sec-ch-ua-platform: "Linux"\r\n'
        b"Origin: http://bench\r\n"
        b"Sec-Fetch-Site: same-origin\r\n"
        b"Sec-Fetch-Mode: cors\r\n"
        b"Sec-Fetch-Dest: empty\r\n"
        b"Referer: http://bench/app/dashboard?tab=activity\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n"
        b"Cookie: sessionid=k3v9w2q8x7m4n6b1z5c0a8s7d6f5g4h3; csrftoken=Qm9yZ2V0IGFib3V0IGl0IHRo"
        b"aXMgaXMgYSBjc3JmIHRva2VuIGZvciB0ZXN0aW5n; _ga=GA1.1.1234567890.1733400000; "
        b"theme=dark\r\n"
    ),
}


def request_bytes(n: int, channels: int, headers: bytes) -> bytes:
    """The request of connection ``n``: ``GET /stream/cr<n % channels>``, ``Host``, ``headers``."""
    return b"GET /stream/cr%d HTTP/1.1\r\nHost: bench\r\n%s\r\n" % (n % channels, headers)


@dataclass(frozen=True, slots=True)
class ClientJob:
    port: int
    conns: int
    window: int
    channels: int
    first: int  # this worker's first connection number (spreads the channels)
    src: str  # the loopback source address (spreads the local ports)
    sched: str = "normal"  # the client process's scheduling policy (bench.swarm.apply_sched)
    headers: bytes = b""  # request header lines after Host (``--headers``: HEADER_SETS)


def _client(job: ClientJob, start, out, close) -> None:
    """Open ``job.conns`` stream connections, ``job.window`` at a time; report; hold them until
    told to close."""
    procs.raise_nofile()
    apply_sched(job.sched)
    ep = select.epoll()
    addr = ("127.0.0.1", job.port)
    pending: dict[int, list] = {}  # fd -> [sock, request sent, bytes read]
    held: list[socket.socket] = []
    done_at: list[float] = []  # when each was established (CLOCK_MONOTONIC: system-wide)
    opened = failed = 0
    start.wait()
    t0, c0 = time.monotonic(), time.process_time()
    last_progress = t0
    while len(held) + failed < job.conns:
        while opened < job.conns and len(pending) < job.window:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # the port is chosen at connect(), unique per 4-tuple: without this, bind() looks
            # for a port no socket holds, and the earlier rounds' TIME_WAIT sockets (tens of
            # thousands) made that search cost the clients up to ~0.8 ms per connection, so
            # whichever target ran later was measured with starved clients
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((job.src, 0))
            n = job.first + opened
            opened += 1
            err = s.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                continue
            req = request_bytes(n, job.channels, job.headers)
            pending[s.fileno()] = [s, req, b""]
            ep.register(s.fileno(), _OUT)
        events = ep.poll(min(5.0, STALL_S))
        if events:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            for fd, st in pending.items():  # the target dropped these without closing them
                ep.unregister(fd)
                st[0].close()
                failed += 1
            pending.clear()
            if opened >= job.conns:
                break
        for fd, ev in events:
            st = pending[fd]
            s = st[0]
            if st[1]:  # connected (or failed): send the request
                if ev & _ERR or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    ep.unregister(fd)
                    del pending[fd]
                    s.close()
                    failed += 1
                    continue
                s.send(st[1])
                st[1] = b""
                ep.modify(fd, _IN)
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del pending[fd]
                s.close()
                failed += 1
                continue
            st[2] += data
            if b"[open]" in st[2]:
                ep.unregister(fd)
                del pending[fd]
                held.append(s)
                done_at.append(time.monotonic())
    out.send(
        {
            "wall_s": time.monotonic() - t0,
            "cpu_s": time.process_time() - c0,
            "held": len(held),
            "failed": failed,
            "done_at": done_at,
        }
    )
    close.wait()
    for s in held:
        s.close()
    out.send("closed")


def _c_escape(request: bytes) -> str:
    """``request`` as ``connload --request`` reads it (C escapes; its one ``%d`` kept)."""
    text = request.decode("latin-1").replace("\\", "\\\\")
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _c_clients(binary: str, jobs: list[ClientJob]) -> list[subprocess.Popen]:
    """One ``connload --hold`` per job, each waiting on its stdin for the start."""
    out = []
    for job in jobs:
        argv = [
            binary,
            "--port", str(job.port),
            "--conns", str(job.conns),
            "--concurrency", str(job.window),
            "--channels", str(job.channels),
            "--request", _c_escape(request_bytes(0, 1, job.headers).replace(b"cr0", b"cr%d", 1)),
            "--until", "[open]",
            "--src", job.src,
            "--duration", "300",
            "--timeout", str(STALL_S),
            "--hold",
        ]  # fmt: skip
        p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda sched=job.sched: apply_sched(sched),
        )
        out.append(p)
    return out


def _c_result(p: subprocess.Popen) -> dict:
    """A held copy's report (its first line), in the Python clients' terms."""
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        raise RuntimeError(f"connload --hold ended without a report: {err.strip()[:500]}")
    r = json.loads(line)
    return {
        "wall_s": r["wall_s"],
        "cpu_s": r["cpu_user_s"] + r["cpu_sys_s"],
        "held": r["held"],
        "failed": sum(r["errors"].values()),
        "done_at": r["held_at"],
    }


def _cpu(pids: list[int]) -> dict[int, float]:
    return {p: procs.cpu_s(p) for p in pids}


def _sys_s(pid: int) -> float:
    """System (kernel) CPU seconds of ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[12]) / procs.CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def _idle_rates(pids: list[int], seconds: float = 2.0) -> dict[int, float]:
    a, t = _cpu(pids), time.monotonic()
    time.sleep(seconds)
    b, dt = _cpu(pids), time.monotonic() - t
    return {p: (b[p] - a[p]) / dt for p in pids}


def run_round(
    target,
    origin_pid: int,
    conns: int,
    nprocs: int,
    window: int,
    channels: int,
    sched: str = "normal",
    client: str = "python",
    headers: bytes = b"",
):
    server = target.pids()
    pids = server + [origin_pid]
    time.sleep(1.0)  # what the previous round's closes left (timers, unsubscriptions) settles
    idle = _idle_rates(pids)
    # the floor's workers (bench.connfloor, C or Python) are its "edges"
    names = {p: "floor" if target.name == "floor" else procs.proc_name(p) for p in server}
    names[origin_pid] = "origin"
    ctx = multiprocessing.get_context("fork")
    start, close = ctx.Event(), ctx.Event()
    per = conns // nprocs
    jobs = [
        ClientJob(
            target.client_port, per, window, channels, i * per, f"127.0.0.{2 + i}", sched, headers
        )
        for i in range(nprocs)
    ]
    pipes, workers = [], []
    copies: list[subprocess.Popen] = []
    if client == "c":
        copies = _c_clients(connload.build(), jobs)
    else:
        for job in jobs:
            parent, child = ctx.Pipe(duplex=False)
            w = ctx.Process(target=_client, args=(job, start, child, close), daemon=True)
            w.start()
            pipes.append(parent)
            workers.append(w)
    k0 = {p: _sys_s(p) for p in pids}
    c0, t0 = _cpu(pids), time.monotonic()
    try:
        if copies:
            for cp in copies:  # the start byte, to every copy at once
                assert cp.stdin is not None
                cp.stdin.write(b"g")
                cp.stdin.flush()
            results = [_c_result(cp) for cp in copies]
        else:
            start.set()
            results = [p.recv() for p in pipes]
    except BaseException:
        for cp in copies:
            cp.kill()
            cp.wait()
        raise
    wall = max(r["wall_s"] for r in results)
    time.sleep(0.5)  # subscriptions and the last registrations reach the broker
    c1, t1 = _cpu(pids), time.monotonic()
    kern = {p: _sys_s(p) - k0[p] for p in pids}
    held = sum(r["held"] for r in results)
    done_at = sorted(t - t0 for r in results for t in r.pop("done_at"))

    def rate_to(q: float) -> float | None:
        """Connections/s up to the moment a share ``q`` of all asked for was established
        (stragglers, e.g. connections a target dropped and the client waited out, left out)."""
        k = int(q * conns)
        if k < 1 or len(done_at) < k or done_at[k - 1] <= 0:
            return None
        return round(k / done_at[k - 1], 1)

    used = {p: max(0.0, c1[p] - c0[p] - idle[p] * (t1 - t0)) for p in pids}
    # closing all of them: measured apart (the connect figures above do not include it)
    close.set()
    for p in pipes:
        p.recv()
    for w in workers:
        w.join()
    for cp in copies:  # stdin's end: each copy closes what it holds and exits
        cp.communicate(timeout=60)
    time.sleep(1.0)
    c2, t2 = _cpu(pids), time.monotonic()
    closed = {p: max(0.0, c2[p] - c1[p] - idle[p] * (t2 - t1)) for p in pids}
    per_proc = {}
    for p in pids:
        name = names[p]
        row = per_proc.setdefault(
            name, {"connect_cpu_s": 0.0, "connect_sys_s": 0.0, "close_cpu_s": 0.0}
        )
        row["connect_cpu_s"] += used[p]
        row["connect_sys_s"] += kern[p]
        row["close_cpu_s"] += closed[p]
    server_s = sum(used[p] for p in server)
    edge_s = sum(used[p] for p in server if names[p].startswith(("edge", "floor")))
    client_s = sum(r["cpu_s"] for r in results)
    k = 1000.0 / held if held else 0.0
    return {
        "connections": held,
        "failed": sum(r["failed"] for r in results),
        "wall_s": round(wall, 3),
        "per_s": round(held / wall, 1) if wall > 0 else None,
        "per_s_to_90pct": rate_to(0.90),
        "per_s_to_99pct": rate_to(0.99),
        "server_cpu_s_per_1000": round(server_s * k, 4),
        "edge_cpu_s_per_1000": round(edge_s * k, 4),
        "origin_cpu_s_per_1000": round(used[origin_pid] * k, 4),
        "client_cpu_s_per_1000": round(client_s * k, 4),
        "server_close_cpu_s_per_1000": round(sum(closed[p] for p in server) * k, 4),
        "processes": {
            n: {
                "connect_cpu_s": round(v["connect_cpu_s"], 3),
                "connect_sys_s": round(v["connect_sys_s"], 3),  # kernel part (no idle subtracted)
                "close_cpu_s": round(v["close_cpu_s"], 3),
                "connect_us_per_conn": round(1e6 * v["connect_cpu_s"] / held, 1) if held else None,
            }
            for n, v in sorted(per_proc.items())
        },
        "loadavg": os.getloadavg(),
    }


def make_origin(kind: str) -> Origin | COrigin:
    """The started bench origin: ``python`` (bench.origin, asyncio) or ``c`` (bench.corigin,
    the same answers from one epoll loop in C)."""
    return COrigin().start() if kind == "c" else Origin().start()


def _make_target(kind: str, args, origin_port: int, workdir: str):
    if kind == "floor":
        return connfloor.FloorTarget(origin_port, args.edges, args.floor)
    stats = not args.no_stats  # same on both targets
    # --edge-affinity: gripcast's edges pinned a CPU each, new connections steered to them
    # (edge_cpu_affinity, edge.cpupin; Pushpin has no such setting)
    on = args.edge_affinity and kind == "gripcast"
    env = {"GRIPCAST_EDGE_CPU_AFFINITY": "true"} if on else None
    return make_target(kind, origin_port, args.edges, workdir, "warning", stats, env=env)


def run_target(kind: str, args, log=print) -> dict:
    procs.raise_nofile()
    workdir = tempfile.mkdtemp(prefix=f"bench-cr-{kind}-")
    origin = make_origin(args.origin)
    target = None
    try:
        target = _make_target(kind, args, origin.port, workdir)
        target.start()
        if kind != "floor":  # the floor proxies but has no publish side (bench.connfloor)
            warm_up(target, 20)
        rows = []
        for r in range(-args.warmup_rounds, args.repeat):
            row = run_round(
                target,
                origin.pid,
                args.conns,
                args.procs,
                args.window,
                args.channels,
                args.client_sched,
                args.client,
                HEADER_SETS[args.headers],
            )
            if r < 0:  # a warm-up round: the same connections, not counted (--warmup-rounds)
                log(
                    f"[{kind}] warm-up round: {row['connections']} held "
                    f"({row['failed']} failed) {row['per_s']:.0f}/s (not counted)"
                )
                continue
            row["round"] = r
            row["warmup_rounds"] = args.warmup_rounds
            row["edge_affinity"] = args.edge_affinity and kind == "gripcast"
            row["client"] = args.client
            row["headers"] = args.headers
            row["origin"] = args.origin
            procs_txt = "  ".join(
                f"{n} {v['connect_us_per_conn']} (sys {v['connect_sys_s']:.2f}s)"
                for n, v in row["processes"].items()
            )
            log(
                f"[{kind}] round {r}: {row['connections']} held ({row['failed']} failed) "
                f"{row['per_s']:.0f}/s (to 90%: {row['per_s_to_90pct']}/s)  server {row['server_cpu_s_per_1000']:.3f} s/1000 "
                f"(edges {row['edge_cpu_s_per_1000']:.3f}) origin "
                f"{row['origin_cpu_s_per_1000']:.3f} clients {row['client_cpu_s_per_1000']:.3f}  "
                f"close {row['server_close_cpu_s_per_1000']:.3f}  us/conn: {procs_txt}  "
                f"load {row['loadavg'][0]:.2f}"
            )
            rows.append(row)
        return {"target": kind, "rows": rows}
    finally:
        if target is not None:
            target.stop()
        origin.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # (the target's config and logs)


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(args) -> int:
    # the C clients' build here, so a missing compiler is a clear message, not a traceback
    if args.client == "c" and connload.ready_binary("connrate", [], connload.build) is None:
        return 2
    if args.origin == "c" and connload.ready_binary("connrate", [], corigin.build) is None:
        return 2
    if args.target == "both":
        targets = (
            ["gripcast", "pushpin"] if args.order != "pushpin-first" else ["pushpin", "gripcast"]
        )
    else:
        targets = [args.target]
    out = {
        "command": "python -m bench connrate " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": os.getloadavg(),
        "results": [run_target(kind, args) for kind in targets],
    }
    out["loadavg_end"] = os.getloadavg()
    print("\nmedian over rounds: connections/s (all; to 90%); server CPU s per 1,000 connections")
    med = {}
    for r in out["results"]:
        rows = r["rows"]
        to90 = [x["per_s_to_90pct"] for x in rows if x["per_s_to_90pct"] is not None]
        med[r["target"]] = m = {
            "per_s": _median(rows, "per_s"),
            "per_s_to_90pct": statistics.median(to90) if to90 else None,
            "server_cpu_s_per_1000": _median(rows, "server_cpu_s_per_1000"),
            "origin_cpu_s_per_1000": _median(rows, "origin_cpu_s_per_1000"),
        }
        r["median"] = m
        print(
            f"  {r['target']:9s} {m['per_s']:9.0f}/s ({m['per_s_to_90pct']}/s)  server "
            f"{m['server_cpu_s_per_1000']:.3f} s/1000  origin {m['origin_cpu_s_per_1000']:.3f}"
        )
    if "gripcast" in med and "pushpin" in med:
        g, p = med["gripcast"], med["pushpin"]
        out["ratio"] = {
            "per_s": round(g["per_s"] / p["per_s"], 2),
            "per_s_to_90pct": round(g["per_s_to_90pct"] / p["per_s_to_90pct"], 2)
            if g["per_s_to_90pct"] and p["per_s_to_90pct"]
            else None,
            "server_cpu_per_conn": round(
                g["server_cpu_s_per_1000"] / p["server_cpu_s_per_1000"], 3
            ),
        }
        print(
            f"  gripcast / Pushpin: {out['ratio']['per_s']}x connections/s "
            f"({out['ratio']['per_s_to_90pct']}x to 90%), "
            f"{out['ratio']['server_cpu_per_conn']}x server CPU per connection"
        )
    save_results(out, args.out, "connrate")
    return 0
