"""``python -m bench``: flags -> a frozen LoadConfig -> scenario runs -> JSON, plots, tables."""

from __future__ import annotations

import argparse
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


def _add_load_args(p: argparse.ArgumentParser, churn: bool) -> None:
    p.add_argument("--transport", choices=TRANSPORTS, default="sse")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument(
        "--rate", type=float, default=10.0, help="messages per second per channel (default 10)"
    )
    p.add_argument(
        "--duration", type=float, default=15.0, help="seconds of publishing (default 15)"
    )
    p.add_argument("--edges", type=int, default=2, help="gripcast edge processes (default 2)")
    p.add_argument("--publisher", choices=("http", "zmq"), default="http")
    p.add_argument(
        "--target", choices=("gripcast", "pushpin", "both"), default="gripcast" if churn else "both"
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
            "churn", help="clients disconnect and resume (Last-Event-ID); an edge is killed"
        ),
        True,
    )
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
    ing.add_argument("--out", default=None)
    return p


def out_path(out: str | None, scenario: str, stamp: str) -> Path:
    if out and out.endswith(".json"):
        return Path(out)
    return Path(out or RESULTS_DIR) / f"{stamp}-{scenario}.json"


def load_config(args) -> LoadConfig:
    if args.smoke:
        args.clients, args.duration, args.rate, args.channels = 50, 5.0, 10.0, 1
    procs = args.procs or (2 if args.clients <= 5000 else 4)
    procs = max(1, min(procs, args.clients))
    churn = args.scenario == "churn"
    return LoadConfig(
        scenario=args.scenario,
        transport=args.transport,
        clients=args.clients,
        channels=args.channels,
        rate=args.rate,
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
        kill_edge=churn and not args.no_kill_edge,
    )


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
    if args.scenario == "ingest":
        with _progress(console) as progress:
            r = run_ingest(args.items, args.publisher, args.batch, progress=progress)
        report.print_ingest(r, console)
        path = report.write_json(
            {**meta, "scenario": "ingest", "result": r}, out_path(args.out, "ingest", stamp)
        )
        console.print(f"results: {path}")
        return 0 if r.get("ok") else 1
    cfg = load_config(args)
    targets = ["gripcast", "pushpin"] if args.target == "both" else [args.target]
    if args.scenario == "churn" and "pushpin" in targets:
        console.print(
            "note: Pushpin does not resume from Last-Event-ID by itself (its origin must replay), "
            "so its churn loss is expected; no edge is killed on Pushpin."
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
    record = {**meta, "scenario": args.scenario, "config": runs[targets[0]]["config"], "runs": runs}
    if len(runs) == 2:
        record["comparison"] = report.comparison(runs)
    if args.tls:
        record["tls_cost"] = report.tls_cost(runs)
    report.write_json(record, path)
    pngs = report.plot(runs, path.with_suffix(""))
    console.print(f"results: {path}" + "".join(f"\nplot: {p}" for p in pngs))
    return 0 if all(r.get("ok") for r in runs.values()) else 1


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
