"""``python -m bench``: flags -> a frozen LoadConfig -> scenario runs -> JSON, plots, tables."""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import report
from bench.scenarios import LoadConfig, run_ingest, run_load

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TRANSPORTS = ("stream", "sse", "longpoll", "ws")


def _non_negative(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n}: must be 0 or more")
    return n


def _add_load_args(p: argparse.ArgumentParser, churn: bool, channels: bool = False) -> None:
    p.add_argument("--transport", choices=TRANSPORTS, default="sse")
    if channels:
        p.add_argument("--channels", type=int, default=1000, help="channels (default 1,000)")
        p.add_argument(
            "--per-channel", type=int, default=10, help="clients on each channel (default 10)"
        )
        p.add_argument(
            "--rate",
            type=float,
            default=1000.0,
            help="messages per second over all channels, spread round them (the first step "
            "of the saturation search; default 1,000)",
        )
    else:
        p.add_argument("--clients", type=int, default=1000)
        p.add_argument("--channels", type=int, default=1)
        p.add_argument(
            "--rate", type=float, default=10.0, help="messages per second per channel (default 10)"
        )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of publishing (default 15; --smoke: 5, channels --smoke: 4; given, it "
        "wins over --smoke's)",
    )
    p.add_argument("--edges", type=int, default=2, help="gripcast edge processes (default 2)")
    p.add_argument("--publisher", choices=("http", "zmq"), default="http")
    p.add_argument(
        "--batch",
        type=int,
        default=100 if channels else 0,
        help="items per POST (ZeroMQ: per burst of frames), each sent when its last item is due "
        f"(default {100 if channels else 0}; 0: every due item, up to 1,000 per POST)",
    )
    p.add_argument(
        "--keep-alive",
        type=int,
        default=0,
        help="the origin asks for Grip-Keep-Alive every S seconds (SSE comment, stream newline)",
    )
    p.add_argument(
        "--rest",
        type=float,
        default=0.0,
        help="seconds at rest after connecting, nothing published: server CPU at rest",
    )
    p.add_argument(
        "--source-addrs",
        type=int,
        default=0,
        help="spread the clients over N loopback source addresses 127.0.0.2.. (more than "
        "~28,000 connections to one port need several; default: 0, one)",
    )
    p.add_argument(
        "--payload-bytes",
        type=int,
        default=0,
        help="large messages: pad every message to about this many bytes (e.g. 16384, 65536)",
    )
    p.add_argument(
        "--publish-conns",
        type=int,
        default=4 if channels else 1,
        help="HTTP publishing: POSTs in flight on as many keep-alive connections "
        f"(default {4 if channels else 1}; more than 1 can reorder a channel's messages when "
        "its consecutive ones fall in POSTs in flight together)",
    )
    p.add_argument(
        "--target", choices=("gripcast", "pushpin", "both"), default="gripcast" if churn else "both"
    )
    p.add_argument(
        "--order",
        choices=("alternate", "gripcast-first", "pushpin-first"),
        default="alternate",
        help="which target runs first with --target both (default: alternate between "
        "invocations, remembered in bench/results/.order)",
    )
    p.add_argument(
        "--log-level",
        choices=("error", "warning", "info", "debug"),
        default="warning",
        help="log level of both targets (Pushpin: 0-3; default warning)",
    )
    p.add_argument(
        "--no-stats",
        action="store_true",
        help="turn off both targets' stats socket (Pushpin's handler stats_spec, gripcast's "
        "stats_spec); on by default on both",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="warm-up connections, each receiving one message, on both targets (default 100)",
    )
    p.add_argument(
        "--late-ms",
        type=float,
        default=5000.0,
        help="a delivery later than this is counted late, not lost (default 5000)",
    )
    p.add_argument(
        "--drain-max",
        type=float,
        default=30.0,
        help="longest wait for stragglers after a step's last publish, s (default 30; it ends "
        "sooner when everything arrived or nothing came for 5 s)",
    )
    p.add_argument(
        "--saturate",
        action="store_true",
        default=channels,
        help="saturation search: rising rates (x --factor per step) until deliveries fall "
        "behind, p99 passes --p99-bound-ms, or a message is lost"
        + (" (on by default here; --no-saturate for one step)" if channels else ""),
    )
    if channels:
        p.add_argument("--no-saturate", dest="saturate", action="store_false")
    p.add_argument(
        "--reader",
        choices=("c", "python"),
        default="c" if channels else "python",
        help="how client workers read established plain stream/SSE bodies and WebSocket frames: "
        "c (bench/creader.c, built with gcc at run time; a few us per delivery: the load "
        "generator is then not the limit) or python (default: c for channels, python elsewhere)",
    )
    p.add_argument(
        "--client-sched",
        choices=("normal", "batch"),
        default="normal",
        help="the client workers' CPU scheduling policy: normal, or batch (SCHED_BATCH: a client "
        "woken by a delivery does not preempt the server that is still sending, as clients on "
        "other hosts cannot; the server's CPU per delivery then excludes that context switch)",
    )
    p.add_argument(
        "--py-spy",
        default="",
        metavar="DIR",
        help="py-spy gripcast's broker and edge0 during step --profile-step (raw collapsed "
        "stacks in DIR; summarise with python -m bench.profile)",
    )
    p.add_argument(
        "--profile-step", type=int, default=1, help="the step to profile (default 1; 0: every step)"
    )
    p.add_argument("--factor", type=float, default=1.5, help="rate step multiplier (default 1.5)")
    p.add_argument("--max-steps", type=int, default=10, help="saturation steps at most (10)")
    p.add_argument(
        "--p99-bound-ms", type=float, default=500.0, help="saturation p99 bound (default 500)"
    )
    p.add_argument(
        "--procs",
        type=int,
        default=None,
        help="client worker processes (default: 2, up to 4 for many clients)",
    )
    p.add_argument(
        "--concurrency", type=int, default=64, help="handshakes in flight per worker (default 64)"
    )
    p.add_argument(
        "--out", default=None, help="directory (or .json file) for results; default bench/results/"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny run: 50 clients, 5 s, 10 msg/s (for CI)"
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="each target runs twice, over plain HTTP then over HTTPS/WSS (a certificate made "
        "for the run), and the TLS cost (HTTPS / HTTP) is shown per target",
    )
    if churn:
        p.add_argument(
            "--churn-rate",
            type=float,
            default=None,
            help="client disconnects per second, all workers together (default: clients/20)",
        )
        p.add_argument("--no-kill-edge", action="store_true", help="do not SIGKILL a gripcast edge")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="gripcast load tests (compare with Pushpin)"
    )
    sub = p.add_subparsers(dest="scenario", required=True)
    _add_load_args(
        sub.add_parser("fanout", help="many clients, numbered messages, deliveries/latency/loss"),
        False,
    )
    _add_load_args(
        sub.add_parser(
            "churn",
            help="resume with cursor: clients disconnect and resume (Last-Event-ID); "
            "an edge is killed",
        ),
        True,
    )
    soak = sub.add_parser(
        "soak",
        help="soak: connects, disconnects, resumes (with cursor) and publishes for --minutes; "
        "RSS and open files of every server process sampled each --interval and judged",
    )
    _add_load_args(soak, True)
    soak.add_argument("--minutes", type=float, default=30.0, help="soak length (default 30)")
    soak.add_argument(
        "--interval", type=float, default=60.0, help="seconds per sample/step (default 60)"
    )
    soak.add_argument(
        "--quick", action="store_true", help="CI form: 1 minute in 10-second steps, 200 clients"
    )
    slow = sub.add_parser(
        "slow",
        help="slow readers: one step without, one with every --slow-every-th client reading "
        "at a trickle (they resume with their cursor when cut); the others' throughput and "
        "latency compared",
    )
    _add_load_args(slow, False)
    slow.add_argument(
        "--slow-every", type=int, default=10, help="every Nth client is slow (default 10: 10%%)"
    )
    slow.add_argument(
        "--slow-rate",
        type=int,
        default=2048,
        help="bytes per second a slow reader reads while slowed (default 2048)",
    )
    slow.add_argument(
        "--slow-mixed",
        action="store_true",
        help="the slow readers in the same client workers as the fast ones (as before; the "
        "default puts them in workers of their own, so their trickle reads do not delay the "
        "fast clients' reads and timestamps)",
    )
    slow.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="(full speed, slowed) step pairs, alternating; the effect is their median (default 1)",
    )
    _add_load_args(
        sub.add_parser(
            "channels",
            help="many channels: --channels C of --per-channel K clients each, publishes spread "
            "round the channels, saturation search",
        ),
        False,
        channels=True,
    )
    hs = sub.add_parser(
        "handshakes",
        help="server CPU per new connection, plain and TLS 1.3 / 1.2 / resumed (bench.handshakes)",
    )
    hs.add_argument("--target", choices=("gripcast", "pushpin", "both"), default="both")
    hs.add_argument("--conns", type=int, default=2000, help="connections per case (default 2,000)")
    hs.add_argument(
        "--procs",
        type=int,
        default=None,
        help="client processes (default 4 Python clients; 1 connload)",
    )
    hs.add_argument(
        "--cases",
        default="",
        help="comma-separated: plain,tls1.3,tls1.2,tls1.3-resume (default: all)",
    )
    hs.add_argument(
        "--request", action="store_true", help="each connection also opens a stream (GET)"
    )
    hs.add_argument("--edges", type=int, default=2, help="gripcast edge processes (default 2)")
    hs.add_argument("--repeat", type=int, default=1, help="rounds of every case (default 1)")
    hs.add_argument("--out", default="", help="JSON path (default bench/results/handshakes-*.json)")
    hs.add_argument(
        "--client",
        choices=("python", "connload"),
        default="python",
        help="python: blocking ssl-module clients, --conns per case (server CPU per "
        "connection); connload: bench/connload.c (epoll + OpenSSL, not the limit), "
        "--duration per case, connections/s too, the targets' order alternating per round",
    )
    hs.add_argument(
        "--duration", type=float, default=5.0, help="seconds per case with connload (5)"
    )
    hs.add_argument(
        "--concurrency", type=int, default=32, help="connections in flight with connload (32)"
    )
    cr = sub.add_parser(
        "connrate",
        help="new held stream connections/s and server CPU per connection (bench.connrate)",
    )
    cr.add_argument(
        "--target",
        choices=("gripcast", "pushpin", "both", "floor"),
        default="both",
        help="floor: bench/connfloor.c, the least a proxy can do per connection (bench.connfloor)",
    )
    cr.add_argument(
        "--floor",
        choices=("c", "python", "trio"),
        default="c",
        help="with --target floor: the C proxy (default), its plain-Python twin, or its trio "
        "twin (a task per connection, as gripcast's edge)",
    )
    cr.add_argument(
        "--order", choices=("gripcast-first", "pushpin-first"), default="gripcast-first"
    )
    cr.add_argument("--conns", type=int, default=10000, help="connections held (default 10,000)")
    cr.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    cr.add_argument("--window", type=int, default=64, help="in flight per process (default 64)")
    cr.add_argument("--channels", type=int, default=1, help="channels (default 1)")
    cr.add_argument("--edges", type=int, default=2, help="gripcast edge processes (default 2)")
    cr.add_argument("--repeat", type=int, default=2, help="rounds per target (default 2)")
    cr.add_argument(
        "--edge-affinity",
        action="store_true",
        help="gripcast's edges with edge_cpu_affinity on: each pinned to a CPU, its listener's "
        "new connections steered to it by SO_INCOMING_CPU (Pushpin has no such setting)",
    )
    cr.add_argument(
        "--warmup-rounds",
        type=_non_negative,
        default=0,
        help="rounds run first on each target and not counted (default 0): the counted rounds "
        "then show servers whose memory a burst of --conns connections has grown before",
    )
    cr.add_argument(
        "--client-sched",
        choices=("normal", "batch"),
        default="normal",
        help="the client processes' scheduling policy (as fanout's --client-sched)",
    )
    cr.add_argument(
        "--client",
        choices=("python", "c"),
        default="python",
        help="the clients: python (default: plain sockets on one epoll per process) or c "
        "(bench/connload.c --hold, one copy per --procs: less of the machine's CPU)",
    )
    cr.add_argument(
        "--origin",
        choices=("python", "c"),
        default="python",
        help="the origin both targets proxy to: python (default: bench/origin.py, asyncio) or "
        "c (bench/corigin.c: the same answers from one epoll loop in C, less of the machine)",
    )
    cr.add_argument(
        "--headers",
        choices=("minimal", "browser"),
        default="minimal",
        help="what each request carries after Host: minimal (default, none) or browser "
        "(Chrome's 15 headers for an EventSource with a session cookie, ~700 bytes)",
    )
    cr.add_argument(
        "--no-stats",
        action="store_true",
        help="turn off both targets' stats socket (on by default on both, as in the fan-out "
        "scenarios): what per-connection statistics cost",
    )
    cr.add_argument("--out", default="", help="JSON path (default bench/results/connrate-*.json)")
    sf = sub.add_parser(
        "sendfloor",
        help="the kernel's cost of one loopback send() to held connections (bench/sendfloor.c): "
        "the floor under fanout's server CPU per delivery",
    )
    sf.add_argument("--conns", type=int, default=10000, help="connections (default 10,000)")
    sf.add_argument(
        "--senders", type=int, default=2, help="sender processes (default 2, as gripcast's edges)"
    )
    sf.add_argument("--readers", type=int, default=4, help="reader processes (default 4)")
    sf.add_argument(
        "--rate", type=float, default=1.0, help="messages/s to every connection (default 1)"
    )
    sf.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    sf.add_argument("--payload", type=int, default=150, help="bytes per message (default 150)")
    sf.add_argument(
        "--client-sched",
        choices=("normal", "batch", "both"),
        default="both",
        help="the readers' scheduling policy (as fanout's --client-sched); both: each in turn",
    )
    sf.add_argument("--repeat", type=int, default=2, help="rounds (default 2)")
    sf.add_argument("--out", default="", help="JSON path (default bench/results/sendfloor-*.json)")
    wk = sub.add_parser(
        "wakecost",
        help="what one loopback write costs the writer when it wakes a sleeping reader, on the "
        "same CPU, another (idle or busy) and where the kernel puts it (bench/wakecost.c)",
    )
    wk.add_argument(
        "--iterations", type=int, default=20000, help="writes per case (default 20,000)"
    )
    wk.add_argument(
        "--gap-us", type=int, default=50, help="pause before each write, us (default 50)"
    )
    wk.add_argument("--repeat", type=int, default=2, help="rounds (default 2)")
    wk.add_argument("--out", default="", help="JSON path (default bench/results/wakecost-*.json)")
    ing = sub.add_parser("ingest", help="broker ingest rate (gripcast broker alone)")
    ing.add_argument("--items", type=int, default=100000)
    ing.add_argument(
        "--publisher",
        choices=("http", "zmq", "zmq-tnetstring", "zmq-msgpack"),
        default="zmq",
        help="http: POST /publish batches; zmq: J + JSON frames; "
        "zmq-tnetstring: bare tnetstring frames; zmq-msgpack: B + msgpack list "
        "frames (M + msgpack item with --batch 1)",
    )
    ing.add_argument(
        "--batch",
        type=int,
        default=100,
        help="items per HTTP POST or per zmq-msgpack B frame (default 100)",
    )
    ing.add_argument(
        "--status-polls-per-s",
        type=float,
        default=0.0,
        help="GET the broker's /status/data this often during the run (its cost; default 0)",
    )
    ing.add_argument("--out", default=None)
    cap = sub.add_parser(
        "capacity",
        help="capacity model's unit costs: publish throughput with 1-3 brokers on Redis "
        "Cluster and standalone Redis, broker CPU per message with 1/10/100 edges (SUB "
        "peers), edge CPU per delivery and per message, memory per connection (docs/capacity.md)",
    )
    cap.add_argument("--quick", action="store_true", help="CI form: under ~20 s")
    cap.add_argument(
        "--parts",
        default=None,
        help="comma-separated subset of throughput,fanout,edge (default: all; --quick: "
        "throughput,fanout)",
    )
    cap.add_argument("--seconds", type=float, default=None, help="measured s per broker count")
    cap.add_argument("--edge-clients", type=int, default=None, help="edge part: idle clients")
    cap.add_argument(
        "--edge-msg-rate",
        type=float,
        default=None,
        help="edge part, second run: messages/s over --edge-clients channels of one client each "
        "(e_msg, the edge's CPU per message received; default 5000, 100 a POST)",
    )
    cap.add_argument(
        "--channels",
        type=int,
        default=None,
        help="throughput: channels per publisher (default 64: busy channels; e.g. 10000 for "
        "many quiet ones, each batch then touching as many channels as items)",
    )
    cap.add_argument("--brokers", default=None, help="throughput: broker counts (default 1,2,3)")
    cap.add_argument("--stores", default=None, help="throughput: cluster,standalone (default both)")
    cap.add_argument("--out", default=None)
    add_chaos_args(sub)
    return p


def add_chaos_args(sub) -> None:
    ch = sub.add_parser(
        "chaos",
        help="several brokers on Redis Sentinel or Cluster under seeded random faults (broker "
        "and edge kills, Redis failovers, link cuts), clients resuming by cursor; fails on any "
        "loss or duplicate among acknowledged messages",
    )
    ch.add_argument("--seed", type=int, default=1, help="the faults and choices (default 1)")
    ch.add_argument(
        "--duration", type=float, default=None, help="seconds (default 180; --quick: 16)"
    )
    ch.add_argument("--redis", choices=("sentinel", "cluster"), default="sentinel")
    ch.add_argument("--brokers", type=int, default=3, help="brokers (2 or 3; default 3)")
    ch.add_argument("--clients", type=int, default=300, help="SSE + WebSocket (default 300)")
    ch.add_argument("--rate", type=float, default=40.0, help="items per second (default 40)")
    ch.add_argument("--fault-every", type=float, default=10.0, help="seconds between faults")
    ch.add_argument(
        "--publisher",
        choices=("http", "command", "zmq"),
        default="http",
        help="how items are published: HTTP POST (acknowledged by 200), the command socket's "
        "publish (acknowledged by its reply) or a ZeroMQ PUSH to every broker (no "
        "acknowledgement: each item must reach every client or none; default http)",
    )
    ch.add_argument("--quick", action="store_true", help="CI form: ~20 s, 60 clients, 2 brokers")
    ch.add_argument("--out", default=None)
    ch.add_argument(
        "--link-cut",
        choices=("netns", "stop"),
        default=None,
        help="link cuts: netns (brokers on hosts of their own, links set down; the default "
        "where network namespaces can be made) or stop (SIGSTOP/SIGCONT)",
    )


def run_chaos_cli(args, console: Console, meta: dict, stamp: str) -> int:
    from bench import chaos

    if args.quick:
        cfg = chaos.ChaosConfig.quick(args.seed, args.redis, args.publisher)
        if args.duration is not None:  # a shorter smoke run (tests/bench/test_bench_chaos.py)
            cfg = replace(cfg, duration_s=args.duration)
    else:
        cfg = chaos.ChaosConfig(
            seed=args.seed,
            duration_s=180.0 if args.duration is None else args.duration,
            redis=args.redis,
            brokers=args.brokers,
            sse_clients=args.clients // 2,
            ws_clients=args.clients - args.clients // 2,
            publish_rate=args.rate,
            fault_every_s=args.fault_every,
            publisher=args.publisher,
        )
    link_cut = args.link_cut
    if link_cut is None:
        from bench.netcut import netns_unavailable

        why = netns_unavailable()
        if not why and cfg.publisher != "http":
            # the ZeroMQ publishers reach every broker's loopback PULL / command ports, which
            # a broker on a host of its own does not bind (publish_bind stays loopback)
            why = f"--publisher {cfg.publisher} reaches brokers on loopback only"
        link_cut = "stop" if why else "netns"
        if why:
            console.print(f"link cuts: SIGSTOP ({why})")
    r = chaos.run_chaos(cfg, log=console.print, link_cut=link_cut)
    chaos.print_result(r, console)
    path = report.write_json(
        {**meta, "scenario": "chaos", "result": r}, out_path(args.out, "chaos", stamp)
    )
    console.print(f"results: {path}")
    return 0 if r["ok"] else 1


def out_path(out: str | None, scenario: str, stamp: str) -> Path:
    if out and out.endswith(".json"):
        return Path(out)
    return Path(out or RESULTS_DIR) / f"{stamp}-{scenario}.json"


def load_config(args) -> LoadConfig:
    rate = args.rate
    duration = 15.0
    if args.scenario == "channels":
        if args.smoke:
            args.channels, args.per_channel, duration, rate = 20, 2, 4.0, 40.0
        args.clients = args.channels * args.per_channel
        rate = rate / args.channels  # total msgs/s -> per channel
    elif args.smoke:
        args.clients, duration, rate, args.channels = 50, 5.0, 10.0, 1
    if getattr(args, "duration", None) is None:  # an explicit --duration wins over --smoke's
        args.duration = duration
    # one worker holds at most ~15,000 connections (every process is held to 20,000 files)
    procs = args.procs or max(2 if args.clients <= 5000 else 4, -(-args.clients // 15000))
    procs = max(1, min(procs, args.clients))
    soak = args.scenario == "soak"
    if soak:
        if args.quick:
            args.minutes, args.interval, args.clients = 1.0, 10.0, min(args.clients, 200)
        args.duration = args.interval
    churn = args.scenario in ("churn", "soak")
    slow = args.scenario == "slow"
    return LoadConfig(
        scenario=args.scenario,
        transport=args.transport,
        clients=args.clients,
        channels=args.channels,
        rate=rate,
        duration=args.duration,
        edges=args.edges,
        publisher=args.publisher,
        procs=procs,
        concurrency=args.concurrency,
        churn_per_s=(
            args.churn_rate if args.churn_rate is not None else max(1.0, args.clients / 20)
        )
        if churn
        else 0.0,
        kill_edge=churn and not args.no_kill_edge and not soak,
        soak_steps=max(2, round(args.minutes * 60 / args.interval)) if soak else 0,
        resume=churn or slow,
        slow_every=args.slow_every if slow else 0,
        slow_bytes_per_s=args.slow_rate if slow else 2048,
        batch=args.batch,
        # never two POSTs in flight holding consecutive messages of one channel
        payload_bytes=args.payload_bytes,
        keep_alive_s=args.keep_alive,
        rest_s=args.rest,
        source_addrs=args.source_addrs
        or (-(-args.clients // 20000) if args.clients > 25000 else 0),
        publish_conns=max(1, min(args.publish_conns, args.channels // args.batch))
        if args.batch > 0
        else 1,
        late_s=args.late_ms / 1000.0,
        drain_max_s=args.drain_max,
        log_level=args.log_level,
        stats=not args.no_stats,
        warmup=args.warmup,
        saturate=args.saturate,
        factor=args.factor,
        max_steps=args.max_steps,
        p99_bound_ms=args.p99_bound_ms,
        profile_dir=args.py_spy,
        profile_step=args.profile_step,
        # the soak's broker retains one step's messages (at least 100, enough for a churned
        # client's resume): full by the end of the warm-up, so retained history is not growth
        history_max_items=max(100, math.ceil(rate * args.interval)) if soak else 100000,
        creader=getattr(args, "reader", "python") == "c",
        client_sched=getattr(args, "client_sched", "normal"),
        slow_apart=not getattr(args, "slow_mixed", False),
        slow_rounds=max(1, getattr(args, "rounds", 1)),
    )


ORDER_FILE = RESULTS_DIR / ".order"
PUSHPIN_MAX_CLIENTS = 18000


def target_order(target: str, order: str, state: Path | None = None) -> list[str]:
    """The targets to run, in order.  ``alternate`` flips the first one at every invocation
    (remembered in ``state``), so neither target always runs on a machine the other warmed."""
    if target != "both":
        return [target]
    pair = ["gripcast", "pushpin"]
    if order == "pushpin-first":
        return pair[::-1]
    if order == "gripcast-first":
        return pair
    state = state or ORDER_FILE
    try:
        last = state.read_text().strip()
    except OSError:
        last = "pushpin"
    first = "pushpin" if last == "gripcast" else "gripcast"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(first + "\n")
    return [first, "gripcast" if first == "pushpin" else "pushpin"]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 130)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": _cpus(),
    }
    if args.scenario == "chaos":
        return run_chaos_cli(args, console, meta, stamp)
    if args.scenario == "handshakes":
        from bench import handshakes

        args.argv = argv if argv is not None else sys.argv[1:]
        return handshakes.main(args)
    if args.scenario == "connrate":
        from bench import connrate

        args.argv = argv if argv is not None else sys.argv[1:]
        return connrate.main(args)
    if args.scenario == "sendfloor":
        from bench import sendfloor

        args.argv = argv if argv is not None else sys.argv[1:]
        return sendfloor.main(args)
    if args.scenario == "wakecost":
        from bench import wakecost

        args.argv = argv if argv is not None else sys.argv[1:]
        return wakecost.main(args)
    if args.scenario == "ingest":
        with _progress(console) as progress:
            r = run_ingest(
                args.items,
                args.publisher,
                args.batch,
                progress=progress,
                status_polls_per_s=args.status_polls_per_s,
            )
        report.print_ingest(r, console)
        path = report.write_json(
            {**meta, "scenario": "ingest", "result": r}, out_path(args.out, "ingest", stamp)
        )
        console.print(f"results: {path}")
        return 0 if r.get("ok") else 1
    if args.scenario == "capacity":
        return _capacity(args, meta, stamp, console)
    cfg = load_config(args)
    targets = target_order(args.target, args.order)
    if "pushpin" in targets and cfg.clients > PUSHPIN_MAX_CLIENTS:
        console.print(
            f"[red]Pushpin's one connection manager (condure) cannot hold more than about "
            f"{PUSHPIN_MAX_CLIENTS:,} connections here (20,000 open files per process): compare "
            f"at {PUSHPIN_MAX_CLIENTS:,} and run gripcast alone above it[/red]"
        )
        return 2
    if args.scenario == "churn" and "pushpin" in targets:
        console.print(
            "note: resume with cursor: Pushpin does not resume from a prev-id by itself (its "
            "origin must replay through a Grip-Link), so its churn loss is expected; no edge is "
            "killed on Pushpin."
        )
    runs = {}
    with _progress(console) as progress:
        for t in targets:
            runs[t] = run_load(t, cfg, progress=progress, label=t)
            if args.tls:
                name = t + "+tls"
                runs[name] = run_load(t, replace(cfg, tls=True), progress=progress, label=name)
    report.print_runs(runs, console)
    if args.tls:
        report.print_tls_cost(runs, console)
    path = out_path(args.out, args.scenario, stamp)
    record = {
        **meta,
        "scenario": args.scenario,
        "order": targets,
        "config": runs[targets[0]]["config"],
        "runs": runs,
    }
    if len(runs) == 2:
        record["comparison"] = report.comparison(runs)
        same = report.same_rate_p99(runs)
        if same is not None:
            record["same_rate_p99"] = same
    if args.tls:
        record["tls_cost"] = report.tls_cost(runs)
    report.write_json(record, path)
    pngs = report.plot(runs, path.with_suffix(""))
    console.print(f"results: {path}" + "".join(f"\nplot: {p}" for p in pngs))
    # a soak fails when a process grew or something was lost
    return (
        0
        if all(r.get("ok") and r.get("soak", {}).get("ok") is not False for r in runs.values())
        else 1
    )


def _capacity(args, meta: dict, stamp: str, console: Console) -> int:
    from bench import capacity

    cfg = capacity.config_for(
        args.quick,
        parts=tuple(args.parts.split(",")) if args.parts else None,
        seconds=args.seconds,
        edge_clients=args.edge_clients,
        edge_msg_rate=args.edge_msg_rate,
        channels=args.channels,
        brokers=tuple(int(b) for b in args.brokers.split(",")) if args.brokers else None,
        stores=tuple(args.stores.split(",")) if args.stores else None,
    )
    r = capacity.run_capacity(cfg, progress=lambda row: console.print(f"  done: {row}"[:200]))
    capacity.print_report(r, console)
    path = report.write_json(
        {**meta, "scenario": "capacity", "result": r}, out_path(args.out, "capacity", stamp)
    )
    console.print(f"results: {path}")
    return 0 if r.get("ok") else 1


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
