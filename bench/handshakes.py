"""Server CPU per new connection, plain and TLS, with a client that is not the bottleneck.

``python -m bench handshakes`` starts a target with an HTTPS listener (``--tls`` certificates:
one ECDSA P-256 pair from ``bench.certs``, the same kind for both targets), then runs each
*case* in turn against it and reads the CPU every server process used from /proc
(``bench.procs``: gripcast's edges and broker; Pushpin's condure, proxy, handler and zurl):

* ``plain``: TCP connect, then the client half-closes and reads until the server closes
  (the cost of accepting and closing a connection, the base the TLS cases add to);
* ``tls1.3`` / ``tls1.2``: a full TLS handshake (no resumption), then the client closes;
* ``tls1.3-resume`` (with ``--request`` only: the tickets come before the response): TLS 1.3
  resuming the ticket of the worker's previous connection (a new ticket each time);
* with ``--request``, each connection also sends ``GET /stream/<ch>`` and reads the stream's
  head (the origin's answer through the proxy) before closing: the bench's connect phase.

The clients are ``--procs`` processes of blocking sockets (the ssl module: OpenSSL does the
client's handshake, little Python per connection), each making its connections one after the
other; their CPU is reported beside the server's.  Server CPU per connection is the figure to
read: it does not depend on how fast the client goes (the machine is shared), while the rate
does.  The idle CPU of the target (heartbeats, stats) is measured for 2 s before each case and
subtracted.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass

from bench import procs
from bench.origin import Origin
from bench.report import save_results
from bench.targets import make_target, warm_up

CASES = ("plain", "tls1.3", "tls1.2", "tls1.3-resume", "tls1.2-resume")
VERSIONS = {"tls1.3": ssl.TLSVersion.TLSv1_3, "tls1.2": ssl.TLSVersion.TLSv1_2}


@dataclass(frozen=True, slots=True)
class ClientJob:
    port: int  # the plain port for "plain", else the HTTPS port
    case: str
    conns: int
    request: bool


def _client_context(case: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench measures the server's side
    version = VERSIONS[case.removesuffix("-resume")]
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _drain(sock: socket.socket) -> None:
    while sock.recv(65536):
        pass


def _one(job: ClientJob, ctx: ssl.SSLContext | None, session, n: int):
    """One connection; the TLS session to resume next (or None); whether it was resumed."""
    sock = socket.create_connection(("127.0.0.1", job.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reused = False
    try:
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_side=False, session=session)
        if job.request:
            sock.sendall(b"GET /stream/hs%d HTTP/1.1\r\nHost: bench\r\n\r\n" % (n % 50))
            got = b""
            while b"[open]" not in got:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the stream's head")
                got += chunk
        elif ctx is None:
            sock.shutdown(socket.SHUT_WR)  # the server sees EOF and closes
            _drain(sock)
        # (TLS without a request: closed right after the handshake, as the client's Finished
        # is sent; the server completes the handshake, then reads the end)
        if isinstance(sock, ssl.SSLSocket):
            reused = sock.session_reused
            session = sock.session if job.case.endswith("-resume") else None
    finally:
        sock.close()
    return session, reused


def _client(job: ClientJob, out) -> None:
    ctx = None if job.case == "plain" else _client_context(job.case)
    session = None
    resumed = failed = 0
    t0 = time.monotonic()
    c0 = time.process_time()
    for n in range(job.conns):
        try:
            session, reused = _one(job, ctx, session, n)
            resumed += reused
        except OSError:
            failed += 1
            session = None
    out.send(
        {
            "wall_s": time.monotonic() - t0,
            "cpu_s": time.process_time() - c0,
            "resumed": resumed,
            "failed": failed,
        }
    )


def _server_cpu(pids: list[int]) -> float:
    return sum(procs.cpu_s(p) for p in pids)


def run_case(target, case: str, conns: int, nprocs: int, request: bool) -> dict:
    pids = target.pids()
    idle0, t_idle = _server_cpu(pids), time.monotonic()
    time.sleep(2.0)
    idle_rate = (_server_cpu(pids) - idle0) / (time.monotonic() - t_idle)
    port = target.client_port if case == "plain" else target.https_port
    per = conns // nprocs
    ctx = multiprocessing.get_context("fork")
    pipes, workers = [], []
    cpu0, t0 = _server_cpu(pids), time.monotonic()
    for _ in range(nprocs):
        parent, child = ctx.Pipe(duplex=False)
        w = ctx.Process(target=_client, args=(ClientJob(port, case, per, request), child))
        w.start()
        pipes.append(parent)
        workers.append(w)
    results = [p.recv() for p in pipes]
    for w in workers:
        w.join()
    wall = time.monotonic() - t0
    time.sleep(0.5)  # the last closes reach the server (and, with requests, the broker)
    elapsed = time.monotonic() - t0
    server = _server_cpu(pids) - cpu0 - idle_rate * elapsed
    done = per * nprocs - sum(r["failed"] for r in results)
    return {
        "case": case,
        "request": request,
        "connections": done,
        "failed": sum(r["failed"] for r in results),
        "resumed": sum(r["resumed"] for r in results),
        "wall_s": round(wall, 3),
        "per_s": round(done / wall, 1) if wall > 0 else None,
        "server_cpu_s": round(server, 3),
        "server_cpu_ms_per_conn": round(1000 * server / done, 3) if done else None,
        "client_cpu_ms_per_conn": round(1000 * sum(r["cpu_s"] for r in results) / done, 3)
        if done
        else None,
        "server_util": round(server / wall, 2) if wall > 0 else None,
        "idle_cpu_per_s": round(idle_rate, 4),
    }


def run_handshakes(
    kind: str,
    cases: tuple[str, ...],
    conns: int,
    nprocs: int,
    request: bool,
    edges: int,
    repeat: int = 1,
    log=print,
) -> dict:
    """Every case (``repeat`` times, interleaved) against one ``kind`` target."""
    procs.raise_nofile()
    workdir = tempfile.mkdtemp(prefix=f"bench-hs-{kind}-")
    origin = Origin().start()
    target = make_target(kind, origin.port, edges, workdir, "warning", True, tls=True)
    try:
        target.start()
        warm_up(target, 20)
        rows = []
        for r in range(repeat):
            for case in cases:
                row = run_case(target, case, conns, nprocs, request)
                row["round"] = r
                log(
                    f"[{kind}] {case:14s} {row['connections']:6d} conns {row['per_s']:8.1f}/s  "
                    f"server {row['server_cpu_ms_per_conn']} ms/conn  "
                    f"client {row['client_cpu_ms_per_conn']} ms/conn  "
                    f"resumed {row['resumed']} failed {row['failed']}"
                )
                rows.append(row)
        names = sorted({procs.proc_name(p) for p in target.pids()})
        return {"target": kind, "processes": names, "rows": rows}
    finally:
        target.stop()
        origin.stop()


def summary(result: dict) -> dict[str, float]:
    """Median server CPU ms per connection of each case over the rounds."""
    import statistics

    by: dict[str, list[float]] = {}
    for row in result["rows"]:
        if row["server_cpu_ms_per_conn"] is not None:
            by.setdefault(row["case"], []).append(row["server_cpu_ms_per_conn"])
    return {case: round(statistics.median(v), 3) for case, v in by.items()}


# -- connections per second with bench.connload (``--client connload``) ---------------------


def _cpu_of(pids: list[int]) -> float:
    return sum(procs.cpu_s(p) for p in pids)


def run_rate_case(target, origin_pid: int, case: str, load: dict, idle_s: float = 1.0) -> dict:
    """One case against ``target`` with ``bench.connload``: connections/s, the server's CPU
    per connection and in cores, the client's and the bench origin's (who was the limit)."""
    from bench import connload

    pids = target.pids()
    idle0, t_idle = _cpu_of(pids), time.monotonic()
    time.sleep(idle_s)
    idle_rate = (_cpu_of(pids) - idle0) / (time.monotonic() - t_idle)
    mode = case.removesuffix("-resume")
    spec = connload.LoadSpec(
        port=target.client_port if case == "plain" else target.https_port,
        mode=mode,
        resume=case.endswith("-resume"),
        concurrency=load["concurrency"],
        duration_s=load["duration_s"],
        procs=load["procs"],
        request=connload.STREAM_REQUEST if load["request"] else "",
        until=connload.STREAM_UNTIL if load["request"] else "\r\n\r\n",
        max_errors=100,  # (Pushpin refuses TLS 1.3: stop rather than fail in a tight loop)
    )
    load0 = os.getloadavg()[0]
    cpu0, origin0, t0 = _cpu_of(pids), procs.cpu_s(origin_pid), time.monotonic()
    running = connload.start(spec, load["binary"])
    rep = connload.collect(running, spec.duration_s + spec.timeout_s + 30)
    wall = time.monotonic() - t0
    server = _cpu_of(pids) - cpu0 - idle_rate * wall
    origin = procs.cpu_s(origin_pid) - origin0
    time.sleep(0.5)  # the closes reach the server before the next idle measurement
    done = rep.completed
    return {
        "target": target.name,
        "case": case,
        "request": load["request"],
        "connections": done,
        "per_s": rep.per_s,
        "errors": rep.errors,
        "first_error": rep.first_error,
        "resumed": rep.resumed,
        "handshake_p50_ms": rep.handshake_p50_ms,
        "handshake_p99_ms": rep.handshake_p99_ms,
        "total_p50_ms": rep.total_p50_ms,
        "total_p99_ms": rep.total_p99_ms,
        "server_cpu_s": round(server, 3),
        "server_cpu_ms_per_conn": round(1000 * server / done, 3) if done else None,
        "server_cores": round(server / wall, 2) if wall > 0 else None,
        "client_cpu_ms_per_conn": rep.client_cpu_ms_per_conn,
        "client_cores": rep.client_util,
        "origin_cores": round(origin / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "loadavg": round(load0, 2),
        "idle_cpu_per_s": round(idle_rate, 4),
    }


def rate_order(kinds: list[str], rnd: int) -> list[str]:
    """The targets' order in round ``rnd``: as given, then reversed, alternately."""
    return list(kinds) if rnd % 2 == 0 else list(reversed(kinds))


def run_rates(
    kinds: list[str],
    cases: tuple[str, ...],
    load: dict,
    edges: int,
    repeat: int,
    log=print,
) -> list[dict]:
    """Every target up at once; each round runs every case on each target, the targets'
    order alternating between rounds."""
    from bench import connload

    procs.raise_nofile()
    load = dict(load, binary=connload.build())
    workdir = tempfile.mkdtemp(prefix="bench-rate-")
    origin = Origin().start()
    targets = []
    try:
        for kind in kinds:
            t = make_target(kind, origin.port, edges, workdir, "warning", True, tls=True)
            targets.append(t)
            t.start()
            warm_up(t, 20)
        by_kind = {t.name: t for t in targets}
        rows = []
        for rnd in range(repeat):
            for kind in rate_order(kinds, rnd):
                for case in cases:
                    row = run_rate_case(by_kind[kind], origin.pid, case, load)
                    row["round"] = rnd
                    errs = sum(row["errors"].values())
                    log(
                        f"[{kind}] {case:14s} {row['per_s']:8.1f} conns/s  server "
                        f"{row['server_cpu_ms_per_conn']} ms/conn ({row['server_cores']} cores)  "
                        f"client {row['client_cpu_ms_per_conn']} ms/conn "
                        f"({row['client_cores']} cores)  origin {row['origin_cores']} cores  "
                        f"hs p50/p99 {row['handshake_p50_ms']}/{row['handshake_p99_ms']} ms  "
                        f"errors {errs}  load {row['loadavg']}"
                    )
                    rows.append(row)
        return rows
    finally:
        for t in targets:
            t.stop()
        origin.stop()


def rate_summary(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per target and case, the medians over rounds of connections/s and server / client CPU
    ms per connection, and each TLS case's ratios to plain (rate and server CPU)."""
    import statistics

    grouped: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        if row.get("connections", 1) == 0:  # refused (Pushpin and TLS 1.3): no figures
            continue
        grouped.setdefault(row["target"], {}).setdefault(row["case"], []).append(row)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, cases in grouped.items():
        out[kind] = {}
        for case, rs in cases.items():
            m: dict[str, float] = {}
            for key in ("per_s", "server_cpu_ms_per_conn", "client_cpu_ms_per_conn"):
                vals = [r[key] for r in rs if r[key] is not None]
                if vals:
                    m[key] = round(statistics.median(vals), 3)
            out[kind][case] = m
        plain = out[kind].get("plain", {})
        for case, m in out[kind].items():
            if case == "plain":
                continue
            if plain.get("per_s") and "per_s" in m:
                m["rate_ratio"] = round(m["per_s"] / plain["per_s"], 3)
            if plain.get("server_cpu_ms_per_conn") and "server_cpu_ms_per_conn" in m:
                m["cpu_ratio"] = round(
                    m["server_cpu_ms_per_conn"] / plain["server_cpu_ms_per_conn"], 3
                )
    return out


def main_rates(args, cases: tuple[str, ...], targets: list[str]) -> int:

    load = {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "procs": args.procs or 1,
        "request": args.request,
    }
    out: dict = {
        "command": "python -m bench " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": os.getloadavg(),
        "client": "connload",
        "load": load,
    }
    out["rows"] = run_rates(targets, cases, load, args.edges, args.repeat)
    out["loadavg_end"] = os.getloadavg()
    out["summary"] = rate_summary(out["rows"])
    print(
        "\nmedians over rounds: connections/s, server / client CPU ms per connection; TLS / plain"
    )
    for kind, by_case in out["summary"].items():
        for case, m in by_case.items():
            ratio = ""
            if "rate_ratio" in m:
                ratio = f"  rate x{m['rate_ratio']:.2f}  server CPU x{m.get('cpu_ratio', 0):.2f}"
            print(
                f"  {kind:9s} {case:14s} {m.get('per_s', 0):8.1f}/s  server "
                f"{m.get('server_cpu_ms_per_conn', '-')} ms  client "
                f"{m.get('client_cpu_ms_per_conn', '-')} ms{ratio}"
            )
    save_results(out, args.out, "handshakes-rate")
    return 0


def main(args) -> int:

    targets = ["gripcast", "pushpin"] if args.target == "both" else [args.target]
    cases = tuple(args.cases.split(",")) if args.cases else CASES
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r} (known: {', '.join(CASES)})")
    if args.client == "connload":
        return main_rates(args, cases, targets)
    args.procs = args.procs or 4
    out = {
        "command": "python -m bench " + " ".join(args.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": os.getloadavg(),
        "results": [],
    }
    for kind in targets:
        r = run_handshakes(
            kind, cases, args.conns, args.procs, args.request, args.edges, args.repeat
        )
        r["median_ms"] = summary(r)
        out["results"].append(r)
    out["loadavg_end"] = os.getloadavg()
    print("\nserver CPU ms per connection (median over rounds); TLS - plain; TLS / plain:")
    for r in out["results"]:
        m = r["median_ms"]
        plain = m.get("plain")
        for case, v in m.items():
            extra = ""
            if plain and case != "plain":
                extra = f"  +{v - plain:.3f} ms  x{v / plain:.2f}"
            print(f"  {r['target']:9s} {case:14s} {v:7.3f} ms{extra}")
    save_results(out, args.out, "handshakes")
    return 0
