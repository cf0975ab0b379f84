"""Scenarios: one load run against one target (``run_load``), and broker ingest (``run_ingest``).

A load run, in order: start the origin and the target (the same log level and the same stats
socket on both targets); the same warm-up on both (``targets.warm_up``); sample the RSS of the
target's whole process tree; start the client workers and let them connect (setup rate =
clients / time from first connect to last head); sample RSS again (memory per held connection,
all processes together and per process); publish probes until every client has seen one (so
nobody is counted as losing a message published before it was subscribed); then one or more
publishing *steps* with the clients kept connected: one step for a plain run, rising rates for a
saturation search (``bench.saturation``).  A step publishes numbered messages for ``duration``
seconds (churn: workers also drop and resume clients, and on gripcast one edge is SIGKILLed
once), waits for stragglers (until every delivery arrived, or none came for ``stall_s``, at most
``drain_max_s``), and collects every worker's counts: deliveries later than ``late_s`` after
their publish are *late* (counted, with their latency), messages that never came are *lost*.
CPU seconds are sampled from /proc for every server and load-generator process around each
step.  Everything started is stopped by PID in ``finally``.

Client behaviour is the same on both targets: a client the server drops reconnects, with its
cursor (SSE ``Last-Event-ID``, HTTP-stream ``?last=``) only when ``resume`` is on, which only
the ``churn`` scenario (labelled "resume with cursor") does; the origin turns a cursor into
``prev-id`` for either target.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from bench import procs
from bench.origin import Origin
from bench.publisher import PublishPlan, open_publisher, probe_item, publisher_main
from bench.saturation import SaturationRule, rate_steps, summary, verdict
from bench.soak import verdict as soak_verdict
from bench.stats import merge_hists, percentiles, summarize
from bench.swarm import WorkerConfig, bucket_value_ms, role_clients, worker_main
from bench.targets import GripcastTarget, Target, make_target, warm_up

CTX = multiprocessing.get_context("fork")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    scenario: str  # fanout | churn | channels
    transport: str
    clients: int
    channels: int
    rate: float  # messages/s per channel (the first step's, in a saturation search)
    duration: float  # seconds of publishing per step
    edges: int
    publisher: str  # http | zmq
    procs: int
    concurrency: int
    churn_per_s: float = 0.0  # churn: client disconnects per second, over all workers
    kill_edge: bool = False  # churn: SIGKILL one gripcast edge once, a third of the way in
    tls: bool = False  # clients connect over HTTPS / WSS (the target's https_port)
    connect_timeout_s: float = 90.0
    probe_timeout_s: float = 20.0
    resume: bool = False  # clients reconnect with a cursor (the labelled resume scenario)
    batch: int = 0  # HTTP publishing: items per POST (0: whatever is due, up to 1000)
    publish_conns: int = 1  # HTTP publishing: POSTs in flight
    payload_bytes: int = 0  # large messages: each message text padded to about this size
    late_s: float = 5.0  # deliveries later than this are late (not lost)
    drain_max_s: float = 30.0  # the longest wait for stragglers after a step's last publish
    stall_s: float = 5.0  # ... which ends earlier when no delivery came for this long
    log_level: str = "warning"  # both targets
    stats: bool = True  # both targets' Pushpin-style stats socket
    warmup: int = 100  # warm-up connections (same on both targets)
    saturate: bool = False  # a saturation search: rising rates until the target saturates
    factor: float = 1.5  # rate multiplier between steps
    max_steps: int = 10
    max_rate: float = 0.0  # per channel; 0: no cap
    p99_bound_ms: float = 500.0
    step_pause_s: float = 1.0  # between steps
    slow_every: int = 0  # slow readers: every slow_every-th client (step 2 of the slow scenario)
    slow_bytes_per_s: int = 2048
    keep_alive_s: int = 0  # the origin asks for Grip-Keep-Alive (SSE comment / empty line)
    rest_s: float = 0.0  # seconds of rest after connecting: CPU at rest (keep-alives on)
    source_addrs: int = 0  # client source addresses 127.0.0.2.. (0: the default one)
    soak_steps: int = 0  # soak: this many steps of ``duration`` s, churning and resuming in each
    profile_dir: str = ""  # py-spy the broker and edge0 (gripcast) during step profile_step
    profile_step: int = 1
    # messages the broker retains per channel (history_max_items); the soak sets it to one
    # step's worth, so the history is full by the end of the warm-up and does not read as growth
    history_max_items: int = 100000
    # established plain stream/SSE bodies and WebSocket frames read by the workers' C reader
    # (bench.creader; --reader c)
    creader: bool = False
    client_sched: str = "normal"  # the client workers' scheduling policy (WorkerConfig.sched)
    # slow scenario: the slow readers in client workers of their own (their trickle reads do
    # not delay the fast clients' reads and timestamps); False: mixed in, as before
    slow_apart: bool = True
    # slow scenario: this many (full speed, slowed) step pairs, alternating; the effect is the
    # median over the pairs (a loaded machine's load drifts within minutes: one pair is noisy)
    slow_rounds: int = 1


WORKER_MAX_CONNS = 15000  # every process is held to 20,000 open files


def worker_plan(
    clients: int, procs: int, slow_every: int = 0, slow_apart: bool = True
) -> list[tuple[int, int, str]]:
    """``(first, last, role)`` of each client worker: ``procs`` workers share the clients in
    contiguous ranges; with slow readers apart, those ``procs`` hold the fast clients only
    (role ``fast``) and the slow readers go to workers of their own (role ``slow``, one per
    ``WORKER_MAX_CONNS`` slow readers), so a fast client's read never waits behind a trickle
    read in its process (latency is timestamped in the worker).  Workers left with no client
    are not started."""
    per = math.ceil(clients / max(1, procs))
    ranges = [(a, min(clients, a + per)) for a in range(0, clients, per)]
    if not slow_every or not slow_apart:
        return [(a, b, "all") for a, b in ranges]
    plan = [(a, b, "fast") for a, b in ranges if len(role_clients(a, b, slow_every, "fast"))]
    n_slow = len(role_clients(0, clients, slow_every, "slow"))
    if n_slow:
        sper = math.ceil(n_slow / math.ceil(n_slow / WORKER_MAX_CONNS)) * slow_every
        plan += [(a, min(clients, a + sper), "slow") for a in range(0, clients, sper)]
    return plan


class _WorkerHandle:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.pipe, child = CTX.Pipe()
        # every name starts "bench-worker" (the saturation verdict looks for it)
        name = f"bench-worker{cfg.index}" + ("-slow" if cfg.role == "slow" else "")
        self.proc = CTX.Process(target=worker_main, args=(cfg, child), name=name, daemon=True)
        self.status: dict = {}
        self.report: dict | None = None
        self.stepped: int | None = None  # the base of the last step this worker acknowledged

    def pump(self) -> None:
        while self.pipe.poll():
            kind, body = self.pipe.recv()
            if kind == "status":
                self.status = body
            elif kind == "stepped":
                self.stepped = body
            else:
                self.report = body

    def stop(self) -> None:
        try:
            self.pipe.send(("stop",))
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _sum(workers, key) -> int:
    return sum(w.status.get(key, 0) for w in workers)


def fail_reasons(workers) -> dict[str, int]:
    """Why the client workers' handshakes failed (they were retried), summed over workers."""
    out: dict[str, int] = {}
    for w in workers:
        for why, n in w.status.get("fail_reasons", {}).items():
            out[why] = out.get(why, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _pump_all(workers) -> None:
    for w in workers:
        w.pump()


class Phase:
    """A rich progress task (or nothing when no progress display is given)."""

    def __init__(self, progress, text: str, total: float | None) -> None:
        self.progress = progress
        self.task = progress.add_task(text, total=total) if progress is not None else None

    def update(self, **kw) -> None:
        if self.progress is not None:
            self.progress.update(self.task, **kw)

    def done(self) -> None:
        if self.progress is not None:
            t = self.progress.tasks[self.task]
            self.progress.update(self.task, completed=t.total or 1, total=t.total or 1)


def _step_rates(cfg: LoadConfig) -> list[float]:
    if cfg.soak_steps:
        return [cfg.rate] * cfg.soak_steps
    if cfg.slow_every:
        # without, then with the slow readers slowed; ``slow_rounds`` times
        return [cfg.rate, cfg.rate] * max(1, cfg.slow_rounds)
    if not cfg.saturate:
        return [cfg.rate]
    return rate_steps(cfg.rate, cfg.factor, cfg.max_steps, cfg.max_rate)


def step_count(rate: float, duration: float) -> int:
    """Messages each channel gets in a step (at least one)."""
    return max(1, int(rate * duration))


def _memory(srv0: dict, srv1: dict, connected: int) -> dict:
    """RSS of every server process before/after the connections, in all and per connection."""
    rss_before = sum(s.rss_kib for s in srv0.values())
    rss_after = sum(s.rss_kib for s in srv1.values())
    rows = []
    for p, s in srv1.items():
        before = srv0[p].rss_kib if p in srv0 else 0
        rows.append(
            {
                "name": s.name,
                "pid": s.pid,
                "before_kib": before,
                "after_kib": s.rss_kib,
                "per_conn_kib": round((s.rss_kib - before) / connected, 3) if connected else None,
            }
        )
    return {
        "processes": len(srv1),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "per_conn_kib": round((rss_after - rss_before) / connected, 2) if connected else None,
        "by_process": sorted(rows, key=lambda r: -r["after_kib"]),
    }


def _py_spy() -> str | None:
    venv = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return venv if os.path.exists(venv) else shutil.which("py-spy")


class _Profiler:
    """py-spy of gripcast's broker and edge0 during one step (``--py-spy DIR``)."""

    cfg: LoadConfig
    kind: str
    target: Target

    def _profile_start(self, index: int, start_at: float) -> list:
        """py-spy (sampling, non-blocking) on gripcast's broker and edge0 for this step's
        publishing, when ``profile_dir`` is set and this is ``profile_step``."""
        cfg = self.cfg
        if not cfg.profile_dir or cfg.profile_step not in (0, index + 1) or self.kind != "gripcast":
            return []
        exe = _py_spy()
        if exe is None:
            return [("error", "py-spy not found (pip install py-spy)")]
        os.makedirs(cfg.profile_dir, exist_ok=True)
        spies = []
        for pid in self.target.pids():
            name = procs.proc_name(pid)
            if name not in ("broker", "edge0"):
                continue
            out = os.path.join(cfg.profile_dir, f"{name}-step{index + 1}.txt")
            argv = [exe, "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", out]
            argv += ["-d", str(max(1, int(cfg.duration))), "-p", str(pid)]
            log = open(out + ".log", "wb")
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            spies.append((name, proc, out, log))
        return spies

    def _profile_stop(self, spies: list) -> dict:
        out: dict = {}
        for s in spies:
            if s[0] == "error":
                out["error"] = s[1]
                continue
            name, proc, path, log = s
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            procs.stop_group(proc, timeout=5)
            log.close()
            out[name] = path if os.path.exists(path) else f"(no profile; see {path}.log)"
        return out


class _Session(_Profiler):
    """What the steps of one run share: the target, the workers, the process samples."""

    def __init__(self, kind, cfg, target, workers, lg_pids, progress, tag) -> None:
        self.kind, self.cfg, self.target, self.workers = kind, cfg, target, workers
        self.lg_pids, self.progress, self.tag = lg_pids, progress, tag
        self.publisher = None

    def samples(self):
        server = procs.sample(self.target.pids())
        lg = procs.sample(list(self.lg_pids))
        for pid, s in lg.items():
            lg[pid] = procs.ProcSample(pid, self.lg_pids[pid], s.rss_kib, s.cpu_s)
        return server, lg

    def step(self, index: int, rate: float, base: int) -> dict:
        cfg, workers, target, tag = self.cfg, self.workers, self.target, self.tag
        if cfg.saturate:
            tag += f"step {index + 1} ({rate * cfg.channels:,.6g} msg/s) "
        count = step_count(rate, cfg.duration)
        churn = cfg.churn_per_s if index == 0 or cfg.soak_steps else 0.0
        slowed = bool(cfg.slow_every) and index % 2 == 1
        for w in workers:
            w.report = None
            w.stepped = None
            w.pipe.send(("step", base, count))
        deadline = time.monotonic() + 30
        while any(w.stepped != base for w in workers):  # every worker counts this step now
            if time.monotonic() > deadline:
                raise TimeoutError("client workers did not start the step")
            _pump_all(workers)
            time.sleep(0.02)
        start_at = time.time() + 0.3
        for w in workers:
            w.pipe.send(("t0", start_at))
            if churn:
                w.pipe.send(("churn", churn / len(workers)))
            if slowed:
                w.pipe.send(("slow", True))
        plan = PublishPlan(
            cfg.publisher,
            target.publish_url,
            target.push_spec,
            cfg.transport,
            cfg.channels,
            rate,
            cfg.duration,
            start_at,
            base,
            cfg.batch,
            cfg.publish_conns,
            cfg.payload_bytes,
        )
        pub_pipe, child = CTX.Pipe()
        publisher = self.publisher = CTX.Process(
            target=publisher_main, args=(plan, child), name="publisher", daemon=True
        )
        publisher.start()
        self.lg_pids[publisher.pid] = "publisher"
        srv2, lg2 = self.samples()
        spies = self._profile_start(index, start_at)
        phase = Phase(self.progress, tag + "publishing", cfg.duration)
        kill_info = None
        last_d, last_t = 0, time.time()
        pub_report = None
        while pub_report is None:
            if pub_pipe.poll(0.1):
                pub_report = pub_pipe.recv()
            _pump_all(workers)
            now = time.time()
            el = now - start_at
            d = _sum(workers, "step_deliveries")
            if now - last_t >= 0.5:
                r = (d - last_d) / (now - last_t)
                last_d, last_t = d, now
                phase.update(
                    completed=max(0.0, min(el, cfg.duration)),
                    description=f"{tag}publishing  {r:,.0f} deliveries/s  live={_sum(workers, 'live')}",
                )
            if (
                cfg.kill_edge
                and index == 0
                and kill_info is None
                and isinstance(target, GripcastTarget)
                and el >= cfg.duration / 3
            ):
                pid = target.kill_edge(0)
                kill_info = {"killed_pid": pid, "at_s": round(el, 2)}
            if pub_report is None and not publisher.is_alive() and not pub_pipe.poll():
                raise RuntimeError(f"publisher exited with code {publisher.exitcode}")
            if el > cfg.duration * 3 + 60:
                raise TimeoutError("publisher did not finish")
        publisher.join(5)
        self.lg_pids.pop(publisher.pid, None)
        srv_p, lg_p = self.samples()  # publishing alone (the wait for stragglers not included)
        t_pub_end = time.time()
        phase.done()
        profiles = self._profile_stop(spies)
        # --- stragglers -------------------------------------------------------------------
        published = pub_report["published"]
        expected = sum(published.get(f"c{i % cfg.channels}", 0) for i in range(cfg.clients))
        for w in workers:
            if churn:
                w.pipe.send(("churn", 0))
            if slowed:  # the slow readers catch up while the run waits for stragglers
                w.pipe.send(("slow", False))
        phase = Phase(self.progress, tag + "waiting for stragglers", expected)
        t_drain = time.time()
        last_d, still_since = -1, time.time()
        while time.time() - t_drain < cfg.drain_max_s:
            _pump_all(workers)
            d = _sum(workers, "step_deliveries")
            phase.update(completed=d)
            if d >= expected and time.time() - t_drain > 0.3:
                break
            if d != last_d:
                last_d, still_since = d, time.time()
            elif time.time() - still_since > cfg.stall_s:
                break
            time.sleep(0.1)
        phase.done()
        drain_s = time.time() - t_drain
        srv3, lg3 = self.samples()
        wall = time.time() - start_at
        if kill_info is not None:
            kill_info["edges_after"] = list(target.edge_pids())
            kill_info["restarted"] = (
                kill_info["killed_pid"] not in kill_info["edges_after"]
                and len(kill_info["edges_after"]) == cfg.edges
            )
        # --- collect ----------------------------------------------------------------------
        for w in workers:
            w.pipe.send(("report", published))
        deadline = time.monotonic() + 30
        while any(w.report is None for w in workers) and time.monotonic() < deadline:
            _pump_all(workers)
            time.sleep(0.05)
        reports = [w.report for w in workers if w.report is not None]
        if len(reports) < len(workers):
            raise TimeoutError(f"only {len(reports)} of {len(workers)} workers reported")
        st = _step_record(cfg, rate, start_at, pub_report, expected, reports, drain_s)
        if cfg.slow_every:
            st["slowed"] = slowed
        if kill_info is not None:
            st["edge_kill"] = kill_info
        if profiles:
            st["profiles"] = profiles
        if cfg.soak_steps:  # every server process's RSS, open files and trio tasks after it
            tasks = target.task_counts() if isinstance(target, GripcastTarget) else {}
            st["resources"] = [
                {
                    "name": s.name,
                    "pid": pid,
                    "rss_kib": s.rss_kib,
                    "fds": procs.fd_count(pid),
                    "tasks": tasks.get(s.name),
                }
                for pid, s in srv3.items()
            ]
        pub_wall = max(1e-6, wall)
        st["cpu"] = {
            "publish_phase": procs.cpu_delta(srv2, srv3, pub_wall, "server")
            + procs.cpu_delta(lg2, lg3, pub_wall, "loadgen"),
            "publish_phase_wall_s": round(pub_wall, 3),
            # while publishing only: core shares not diluted by a long wait for stragglers
            "publishing": procs.cpu_delta(srv2, srv_p, max(1e-6, t_pub_end - start_at), "server")
            + procs.cpu_delta(lg2, lg_p, max(1e-6, t_pub_end - start_at), "loadgen"),
        }
        if cfg.slow_every:
            st["loadgen_roles"] = loadgen_roles(st["cpu"]["publishing"])
        return st


def loadgen_roles(rows: list[dict]) -> dict:
    """The load generator's CPU while publishing, by role: the workers holding fast clients
    (``bench-worker<i>``), those holding only slow readers (``bench-worker<i>-slow``), and the
    rest (publisher, origin, the parent): CPU s and the busiest worker's core share."""
    out: dict = {}
    for r in rows:
        if r["role"] != "loadgen":
            continue
        name = r["name"]
        role = (
            ("slow_workers" if name.endswith("-slow") else "workers")
            if name.startswith("bench-worker")
            else name
        )
        g = out.setdefault(role, {"processes": 0, "cpu_s": 0.0, "busiest_core_share": 0.0})
        g["processes"] += 1
        g["cpu_s"] = round(g["cpu_s"] + r["cpu_s"], 3)
        g["busiest_core_share"] = max(g["busiest_core_share"], r["cpu_util"] or 0.0)
    return out


def slow_effect(before: dict, after: dict) -> dict:
    """What the slow readers cost the others: the fast clients' deliveries/s and latency with
    the slow readers slowed (``after``) over without (``before``); the goal keeps 90%."""

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    d0, d1 = before["deliveries"], after["deliveries"]
    l0, l1 = before["latency_ms"], after["latency_ms"]
    throughput = ratio(d1["per_s"], d0["per_s"])
    p99 = ratio(l1["p99"], l0["p99"])
    return {
        "fast_throughput_kept": throughput,
        "fast_on_time_kept": ratio(d1["on_time"], d0["on_time"]),
        "fast_p50_ratio": ratio(l1["p50"], l0["p50"]),
        "fast_p99_ratio": p99,
        # 90% of the throughput kept, and the p99 at most 1/0.9 of what it was
        "goal_met": throughput is not None
        and throughput >= 0.9
        and p99 is not None
        and p99 <= 1 / 0.9,
        "slow_readers": after.get("slow_readers"),
    }


def slow_effect_rounds(steps: list[dict]) -> dict:
    """``slow_effect`` over alternating (full speed, slowed) step pairs: each pair's ratios, and
    their medians (the goal is judged on those); the slow readers' figures summed."""
    pairs = [slow_effect(steps[i], steps[i + 1]) for i in range(0, len(steps) - 1, 2)]

    def median(key):
        vals = sorted(p[key] for p in pairs if p[key] is not None)
        if not vals:
            return None
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else round((vals[mid - 1] + vals[mid]) / 2, 3)

    keys = ("fast_throughput_kept", "fast_on_time_kept", "fast_p50_ratio", "fast_p99_ratio")
    out: dict = {k: median(k) for k in keys}
    t, p99 = out["fast_throughput_kept"], out["fast_p99_ratio"]
    out["goal_met"] = t is not None and t >= 0.9 and p99 is not None and p99 <= 1 / 0.9
    out["pairs"] = [{k: p[k] for k in (*keys, "goal_met")} for p in pairs]
    groups = [st["slow_readers"] for st in steps[1::2] if st.get("slow_readers")]
    summed = ("clients", "expected", "received", "lost", "duplicated", "drops", "resumed")
    out["slow_readers"] = (
        {
            **{k: sum(g.get(k) or 0 for g in groups) for k in summed},
            "clients": groups[0]["clients"],
            "bytes_per_s": groups[0]["bytes_per_s"],
            "p50_ms": max((g["p50_ms"] or 0) for g in groups),
            "p99_ms": max((g["p99_ms"] or 0) for g in groups),
        }
        if groups
        else None
    )
    return out


def _slow_group(cfg, published, reports) -> dict:
    """The slow readers of a step: their expected deliveries, what they got, lost, drops."""
    idx = [i for i in range(cfg.clients) if i % cfg.slow_every == 0]
    expected = sum(published.get(f"c{i % cfg.channels}", 0) for i in idx)
    slow = [r["slow"] for r in reports]
    pc = summarize(merge_hists([s["hist"] for s in slow]))["latency_ms"]  # keys hold seconds
    return {
        "clients": len(idx),
        "bytes_per_s": cfg.slow_bytes_per_s,
        "expected": expected,
        "received": sum(s["deliveries"] for s in slow),
        "lost": sum(s["lost"] for s in slow),
        "duplicated": sum(s["duplicated"] for s in slow),
        "drops": sum(s["drops"] for s in slow),  # cut by the server
        "resumed": sum(s.get("reconnects", 0) for s in slow),  # back, with their cursor
        "p50_ms": pc["p50"],
        "p99_ms": pc["p99"],
    }


def on_time_last_second(publish_s: float) -> int:
    """The last second (from the publish start) whose deliveries are "on time": about one
    second after publishing ended.  ``int(publish_s)`` left out the last batch when publishing
    took just under a whole number of seconds (4.996 s: a batch sent then and received at
    5.02 s fell in second 5, and a step of 10 batches read 90% on time)."""
    return round(publish_s)


def _step_record(cfg, rate, start_at, pub_report, expected, reports, drain_s) -> dict:
    summary_ = summarize(merge_hists([r["hist"] for r in reports]))
    slow = _slow_group(cfg, pub_report["published"], reports) if cfg.slow_every else None
    if slow is not None:  # the table's figures are the other clients' (the fast ones)
        expected -= slow["expected"]
    received = summary_["deliveries"]
    lat = summary_["latency_ms"]
    lat["max"] = round(max((r["max_lat"] for r in reports), default=0.0) * 1000, 3)
    late_hist = merge_hists([r["late_hist"] for r in reports])
    late = sum(r["late"] for r in reports)
    late_pc = percentiles(late_hist, (50, 99))
    worst = max(
        (r["worst"] for r in reports if r["worst"]), key=lambda x: x[1] + x[2], default=None
    )
    series = summary_["series"]
    # how long publishing took: not ``duration`` when a channel's share of messages rounds
    dur = pub_report.get("elapsed_s") or cfg.duration
    steady = [s["deliveries"] for s in series if 0 <= s["t"] < int(dur)]
    on_time = sum(s["deliveries"] for s in series if s["t"] <= on_time_last_second(dur))
    last_rx = max((r["last_rx"] for r in reports), default=0.0)
    taken = max(dur, last_rx - start_at)
    lost = sum(r["lost"] for r in reports) - (slow["lost"] if slow else 0)
    dup = sum(r["dup"] for r in reports) - (slow["duplicated"] if slow else 0)
    return {
        **({"slow_readers": slow} if slow else {}),
        "rate": rate,
        "msgs_per_s": round(rate * cfg.channels, 3),
        "offered_deliveries_per_s": round(rate * cfg.clients, 1),
        "publish_start": round(start_at, 3),  # epoch s: loss.detail event times compare with it
        "publish": pub_report,
        "deliveries": {
            "expected": expected,
            "received": received,
            # received within 1 s after publishing ended (the saturation test's "on time")
            "on_time": on_time,
            # received / the time it took: publishing time, or longer if deliveries trailed behind
            "per_s": round(received / taken, 1) if taken else None,
            "per_s_steady_median": sorted(steady)[len(steady) // 2] if steady else None,
            "per_s_peak": max(steady) if steady else None,
            "stale": sum(r["stale"] for r in reports),
            # of ``received``, read by the client workers' C reader (--reader c)
            "by_c_reader": sum(r.get("c_deliveries", 0) for r in reports),
            # message payload bytes delivered per second (large messages)
            "payload_bytes_per_s": round(received / taken * max(cfg.payload_bytes, 20), 1)
            if taken
            else None,
        },
        "latency_ms": lat,
        "late": {
            "late_after_ms": round(cfg.late_s * 1000),
            "count": late,
            "p50_ms": late_pc["p50"],
            "p99_ms": late_pc["p99"],
            "max_ms": round(bucket_value_ms(max(late_hist)), 3) if late_hist else None,
        },
        "drain_s": round(drain_s, 3),
        "series": series,
        "loss": {
            "lost": lost,
            "duplicated": dup,
            "clients_with_loss": sum(r["clients_with_loss"] for r in reports),
            "clients_with_dup": sum(r["clients_with_dup"] for r in reports),
            "worst_client": {"client": worst[0], "lost": worst[1], "duplicated": worst[2]}
            if worst
            else None,
            "per_client_sample": [x for r in reports for x in r["per_client"]][:200],
            # lost/duplicated seq runs and recent (time, open|churned|dropped|failed, cursor)
            "detail": [x for r in reports for x in r.get("detail", [])][:20],
        },
        "connections": {
            k: sum(r["status"][k] for r in reports)
            for k in ("drops", "reconnects", "failures", "churned")
        },
    }


def run_load(kind: str, cfg: LoadConfig, progress=None, label: str = "") -> dict:
    """One fanout/churn/channels run against target ``kind``; returns the result record."""
    procs.raise_nofile()
    workdir = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    origin = target = None
    session = None
    workers: list[_WorkerHandle] = []
    lg_pids: dict[int, str] = {os.getpid(): "bench (parent)"}
    result: dict = {"target": kind, "config": asdict(cfg)}
    tag = f"[{label or kind}] "
    try:
        origin = Origin(resume=cfg.resume, keep_alive=cfg.keep_alive_s).start()
        lg_pids[origin.pid] = "origin"
        target = make_target(
            kind,
            origin.port,
            cfg.edges,
            workdir,
            cfg.log_level,
            cfg.stats,
            tls=cfg.tls,
            history_max_items=cfg.history_max_items,
        )
        target.start()
        result["warmup"] = warm_up(target, cfg.warmup)
        session = _Session(kind, cfg, target, workers, lg_pids, progress, tag)

        time.sleep(0.5)
        srv0, lg0 = session.samples()

        # --- connect ----------------------------------------------------------------------
        if cfg.creader:
            from bench.creader import build

            result["creader"] = build()  # compiled once, here: a missing gcc is said now
        max_seq = step_count(cfg.rate, cfg.duration) + 16
        plan = worker_plan(cfg.clients, cfg.procs, cfg.slow_every, cfg.slow_apart)
        for i, (first, last, role) in enumerate(plan):
            workers.append(
                _WorkerHandle(
                    WorkerConfig(
                        i,
                        target.https_port if cfg.tls else target.client_port,
                        cfg.transport,
                        first,
                        last,
                        cfg.channels,
                        max_seq,
                        cfg.concurrency,
                        resume=cfg.resume,
                        late_s=cfg.late_s,
                        slow_every=cfg.slow_every,
                        slow_bytes_per_s=cfg.slow_bytes_per_s,
                        source_addrs=cfg.source_addrs,
                        tls=cfg.tls,
                        creader=cfg.creader,
                        role=role,
                        sched=cfg.client_sched,
                    )
                )
            )
        t_connect = time.time()
        for w in workers:
            w.proc.start()
            lg_pids[w.proc.pid] = w.proc.name
        phase = Phase(progress, tag + "connecting", cfg.clients)
        # at least 250 connections/s: 100,000 clients get 400 s (a 90-s bound cut a 100,000
        # run at 77,004 connected on a loaded machine, and counted the rest as lost)
        deadline = time.monotonic() + max(cfg.connect_timeout_s, cfg.clients / 250)
        while True:
            _pump_all(workers)
            connected = _sum(workers, "connected")
            phase.update(completed=connected)
            if connected >= cfg.clients or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        phase.done()
        t_firsts = [w.status["t_first"] for w in workers if w.status.get("t_first")]
        t_alls = [w.status["t_all"] for w in workers if w.status.get("t_all")]
        setup_s = (
            (max(t_alls) - min(t_firsts)) if len(t_alls) == len(workers) and t_firsts else None
        )
        time.sleep(1.0)  # let the servers settle before measuring memory
        _pump_all(workers)
        srv1, lg1 = session.samples()
        connect_wall = max(1e-6, time.time() - t_connect)
        result["connect"] = {
            "clients": cfg.clients,
            "connected": connected,
            "failures": _sum(workers, "failures"),
            "fail_reasons": fail_reasons(workers),
            "setup_s": round(setup_s, 3) if setup_s else None,
            "rate_per_s": round(connected / setup_s, 1) if setup_s else None,
            "wall_s": round(connect_wall, 3),
        }
        result["memory"] = _memory(srv0, srv1, connected)
        connect_cpu = procs.cpu_delta(srv0, srv1, connect_wall, "server") + procs.cpu_delta(
            lg0, lg1, connect_wall, "loadgen"
        )
        if cfg.rest_s > 0:  # every connection open, nothing published: CPU at rest
            phase = Phase(progress, tag + "at rest", cfg.rest_s)
            t_rest = time.time()
            rx_rest = _sum(workers, "rx_bytes")
            while time.time() - t_rest < cfg.rest_s:
                _pump_all(workers)
                phase.update(completed=time.time() - t_rest)
                time.sleep(0.2)
            phase.done()
            srv_r, lg_r = session.samples()
            rest_wall = time.time() - t_rest
            rest = procs.cpu_delta(srv1, srv_r, rest_wall, "server")
            server_s = sum(p["cpu_s"] for p in rest)
            result["rest"] = {
                "s": round(rest_wall, 3),
                "keep_alive_s": cfg.keep_alive_s,
                "server_cpu_s": round(server_s, 3),
                "server_core_share": round(server_s / rest_wall, 4),
                "server_cpu_us_per_conn_s": round(server_s * 1e6 / rest_wall / connected, 3)
                if connected
                else None,
                "live": _sum(workers, "live"),
                # what the clients read while nothing was published: the keep-alives
                "rx_bytes": _sum(workers, "rx_bytes") - rx_rest,
                "cpu": rest + procs.cpu_delta(lg1, lg_r, rest_wall, "loadgen"),
            }

        # --- probe barrier: every client subscribed ---------------------------------------
        phase = Phase(progress, tag + "subscribing (probes)", connected)
        pub = open_publisher("http", target.publish_url, target.push_spec)
        deadline = time.monotonic() + cfg.probe_timeout_s
        k = 0
        try:
            while True:
                k += 1
                items = [probe_item(cfg.transport, f"c{i}", k) for i in range(cfg.channels)]
                for j in range(0, len(items), 1000):
                    pub.publish(items[j : j + 1000])
                t_end = time.monotonic() + 0.3
                while time.monotonic() < t_end:
                    _pump_all(workers)
                    time.sleep(0.05)
                probed = _sum(workers, "probed")
                phase.update(completed=probed)
                if probed >= connected or time.monotonic() > deadline:
                    break
        finally:
            pub.close()
        phase.done()
        result["probes"] = {"sent": k, "clients_probed": probed}

        # --- publishing steps -------------------------------------------------------------
        rule = SaturationRule(p99_bound_ms=cfg.p99_bound_ms)
        steps: list[dict] = []
        base = 0
        for index, rate in enumerate(_step_rates(cfg)):
            if index:
                time.sleep(cfg.step_pause_s)
            st = session.step(index, rate, base)
            st["saturation"] = verdict(st, rule)
            steps.append(st)
            base += st["publish"]["per_channel"]
            if cfg.saturate and (
                st["saturation"]["saturated"] or st["saturation"]["loadgen_limited"]
            ):
                break
        if cfg.saturate:
            ok = [s for s in steps if not s["saturation"]["saturated"]]
            shown = max(ok, key=lambda s: s["deliveries"]["per_s"] or 0) if ok else steps[0]
        elif cfg.slow_every or cfg.soak_steps:
            shown = steps[-1]  # the step with the slow readers slowed / the soak's last
        else:
            shown = steps[0]
        # the table's columns: the one step (or the search's best unsaturated step)
        result.update(shown)
        result["verdict"] = result.pop("saturation")
        if cfg.soak_steps:
            result["soak"] = soak_verdict(steps)
        if cfg.saturate or cfg.slow_every or cfg.soak_steps:
            result["steps"] = [{k: v for k, v in st.items() if k != "series"} for st in steps]
        if cfg.saturate:
            result["saturation"] = summary(steps, cfg.max_steps)
        if cfg.slow_every and len(steps) == 2:
            result["slow_effect"] = slow_effect(steps[0], steps[1])
        elif cfg.slow_every and len(steps) > 2:
            result["slow_effect"] = slow_effect_rounds(steps)
        result["cpu"]["connect_phase"] = connect_cpu
        result["ok"] = True
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        if target is not None:
            result["target_log_tail"] = target.log_tail(40)
    finally:
        for w in workers:
            w.stop()
        if session is not None and session.publisher is not None and session.publisher.is_alive():
            session.publisher.kill()
            session.publisher.join()
        if target is not None:
            target.stop()
        if origin is not None:
            origin.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- ingest -------------------------------------------------------------------------------


def ingest_frames(publisher: str, payloads: list[dict], batch: int) -> tuple[list[bytes], int]:
    """The PUSH frames for ``payloads`` (made before the clock starts) and items per frame:
    ``zmq`` J + JSON, ``zmq-tnetstring`` a bare tnetstring, ``zmq-msgpack`` B + a msgpack list
    of ``batch`` items (M + one msgpack item when ``batch`` is 1)."""
    import json

    import msgpack

    if publisher == "zmq":
        return [b"J" + json.dumps(p).encode() for p in payloads], 1
    if publisher == "zmq-tnetstring":
        from broker.ingest import tnetstring

        return [tnetstring.dumps(p) for p in payloads], 1
    if publisher == "zmq-msgpack":
        if batch <= 1:
            return [b"M" + msgpack.packb(p) for p in payloads], 1
        return [
            b"B" + msgpack.packb(payloads[i : i + batch]) for i in range(0, len(payloads), batch)
        ], batch
    raise ValueError(f"unknown ingest publisher {publisher!r}")


_POLLER = """
import sys, time, httpx
url, period, n = sys.argv[1], 1.0 / float(sys.argv[2]), 0
with httpx.Client(timeout=5.0) as client:
    next_t = time.monotonic()
    try:
        while True:
            next_t += period
            time.sleep(max(next_t - time.monotonic(), 0))
            n += client.get(url).status_code == 200
    except KeyboardInterrupt:
        print(n, flush=True)
"""


class _StatusPoller:
    """GETs ``/status/data`` ``per_s`` times a second until ``stop`` (0: never), from its own
    process so that it does not take the publisher's GIL."""

    def __init__(self, url: str, per_s: float) -> None:
        self.proc = None
        if per_s > 0:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _POLLER, url + "/status/data", str(per_s)],
                stdout=subprocess.PIPE,
                text=True,
            )

    def stop(self) -> int:
        """Stop it; the polls answered 200."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        return int(out.strip() or 0)


def run_ingest(
    items: int,
    publisher: str,
    batch: int = 100,
    progress=None,
    timeout_s: float = 120.0,
    status_polls_per_s: float = 0.0,
) -> dict:
    """Broker ingest: ``items`` messages into a lone gripcast broker, counted on its edge fan-out.

    A pyzmq SUB on the broker's edge_pub port subscribes to ``bench\\0`` (so the broker sees a
    live channel and fans out); the rate is items / (first send .. last item received).
    ``status_polls_per_s``: a thread GETs the broker's ``/status/data`` that often meanwhile
    (the status page's cost on the publish path).
    """
    import zmq

    from broker import wire

    workdir = tempfile.mkdtemp(prefix="bench-ingest-")
    target = GripcastTarget(origin_port=9, edges=0, workdir=workdir)
    result: dict = {"target": "gripcast", "items": items, "publisher": publisher, "batch": batch}
    ctx = zmq.Context()
    sub = pushsock = None
    try:
        target.start_broker_only()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(target.edge_pub_spec)
        # a step's items come as one message: the batch topic first (subscriptions arrive in
        # order, so the probe below proves both are in place), as an edge does
        sub.setsockopt(zmq.SUBSCRIBE, wire.BATCH_TOPIC)
        sub.setsockopt(zmq.SUBSCRIBE, b"bench\x00")
        # wait until the broker fans out to us (its subscription notice arrived): send probes
        pub = open_publisher("http", target.publish_url, target.push_spec)
        deadline = time.monotonic() + 15
        while True:
            pub.publish([{"channel": "bench", "formats": {"http-stream": {"content": "probe\n"}}}])
            if sub.poll(200):
                while sub.poll(50):
                    sub.recv()
                break
            if time.monotonic() > deadline:
                raise TimeoutError("broker never fanned out to the bench SUB")
        srv0 = procs.sample(target.pids())
        me0 = {
            p: procs.ProcSample(p, "bench (publisher + SUB)", x.rss_kib, x.cpu_s)
            for p, x in procs.sample([os.getpid()]).items()
        }
        payloads = [
            {
                "channel": "bench",
                "id": f"i{n}",
                "formats": {"http-stream": {"content": f"item {n}\n"}},
            }
            for n in range(items)
        ]
        received = 0
        phase = Phase(progress, "ingest", items)
        poller = _StatusPoller(target.publish_url, status_polls_per_s)
        t_start = time.time()
        if publisher.startswith("zmq"):
            pushsock = ctx.socket(zmq.PUSH)
            pushsock.setsockopt(zmq.SNDHWM, 0)
            pushsock.connect(target.push_spec)
            frames, per_frame = ingest_frames(publisher, payloads, batch)
            t_start = time.time()
            sent = 0  # frames
            nframes = len(frames)
            step = max(1, 1000 // per_frame)
            while received < items:
                # interleave sending and receiving so neither side's queue grows without bound
                if sent < nframes:
                    end = min(nframes, sent + step)
                    for f in frames[sent:end]:
                        pushsock.send(f)
                    sent = end
                while True:
                    try:
                        msg = sub.recv(zmq.NOBLOCK)  # items only, not markers:
                        received += sum(
                            b"item " in f for f in wire.channel_frames([msg], {b"bench"})
                        )
                    except zmq.Again:
                        break
                if sent >= nframes and received < items:
                    if not sub.poll(2000):
                        break
                if time.time() - t_start > timeout_s:
                    break
                phase.update(completed=received)
            t_sent = None
        else:
            acked = 0
            for i in range(0, items, batch):
                pub.publish(payloads[i : i + batch])
                acked += len(payloads[i : i + batch])
                while True:
                    try:
                        msg = sub.recv(zmq.NOBLOCK)  # items only, not markers:
                        received += sum(
                            b"item " in f for f in wire.channel_frames([msg], {b"bench"})
                        )
                    except zmq.Again:
                        break
                phase.update(completed=acked)
            t_sent = time.time()
            while received < items and sub.poll(2000):
                received += b"item " in sub.recv()
        elapsed = time.time() - t_start
        result["status_polls"] = poller.stop()
        phase.done()
        pub.close()
        srv1 = procs.sample(target.pids())
        me1 = {
            p: procs.ProcSample(p, "bench (publisher + SUB)", x.rss_kib, x.cpu_s)
            for p, x in procs.sample([os.getpid()]).items()
        }
        server_cpu = procs.cpu_delta(srv0, srv1, elapsed, "server")
        broker_cpu_s = sum(p["cpu_s"] for p in server_cpu)
        result.update(
            {
                # items per CPU second of the broker: the broker's own cost, which (unlike items/s)
                # does not move when other processes take the CPU away from it
                "items_per_broker_cpu_s": round(received / broker_cpu_s, 1)
                if broker_cpu_s > 0
                else None,
                "received": received,
                "elapsed_s": round(elapsed, 3),
                "items_per_s": round(received / elapsed, 1) if elapsed > 0 else None,
                "acked_per_s": round(items / (t_sent - t_start), 1) if t_sent else None,
                "cpu": server_cpu + procs.cpu_delta(me0, me1, elapsed, "loadgen (publisher + SUB)"),
                "ok": received == items,
            }
        )
        if received != items:
            result["error"] = f"received {received} of {items} items within the time limit"
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["target_log_tail"] = target.log_tail(40)
    finally:
        for s in (sub, pushsock):
            if s is not None:
                s.close(linger=0)
        ctx.term()
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result
