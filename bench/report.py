"""Outputs: the JSON record, PNG plots, and rich tables (one target, or two side by side)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# (label, getter, better): better is "high", "low" or None (no ratio judgement)
METRICS = [
    (
        "saturation: limit deliveries/s (best unsaturated step)",
        lambda r: r["saturation"]["limit_deliveries_per_s"],
        "high",
    ),
    (
        "saturation: saturated at msg/s (why)",
        lambda r: _saturated(r),
        None,
    ),
    ("deliveries/s (received / time to receive)", lambda r: r["deliveries"]["per_s"], "high"),
    (
        "deliveries/s (median second while publishing)",
        lambda r: r["deliveries"]["per_s_steady_median"],
        "high",
    ),
    (
        "deliveries received / expected",
        lambda r: f"{r['deliveries']['received']} / {r['deliveries']['expected']}",
        None,
    ),
    (
        "payload MB/s delivered",
        lambda r: round(r["deliveries"]["payload_bytes_per_s"] / 1e6, 2),
        "high",
    ),
    ("latency p50 ms", lambda r: r["latency_ms"]["p50"], "low"),
    ("latency p90 ms", lambda r: r["latency_ms"]["p90"], "low"),
    ("latency p99 ms", lambda r: r["latency_ms"]["p99"], "low"),
    ("latency max ms", lambda r: r["latency_ms"]["max"], "low"),
    ("connections/s while establishing", lambda r: r["connect"]["rate_per_s"], "high"),
    ("at rest: server core share (keep-alive s)", lambda r: _rest(r), None),
    (
        "at rest: server CPU us per connection-second",
        lambda r: r["rest"]["server_cpu_us_per_conn_s"],
        "low",
    ),
    ("connect failures (retried)", lambda r: r["connect"]["failures"], None),
    (
        "memory per held connection KiB (whole process tree)",
        lambda r: r["memory"]["per_conn_kib"],
        "low",
    ),
    ("server processes measured", lambda r: r["memory"]["processes"], None),
    (
        "server RSS before / after connect MiB",
        lambda r: (
            f"{r['memory']['rss_before_kib'] / 1024:.0f} / {r['memory']['rss_after_kib'] / 1024:.0f}"
        ),
        None,
    ),
    (
        "late deliveries (after late ms; counted delivered)",
        lambda r: f"{r['late']['count']:,} (>{r['late']['late_after_ms']} ms)",
        None,
    ),
    ("late deliveries latency p50 / p99 / max ms", lambda r: _late(r), None),
    ("messages lost (never arrived; all clients)", lambda r: r["loss"]["lost"], "low"),
    ("messages duplicated (all clients)", lambda r: r["loss"]["duplicated"], "low"),
    (
        "clients with loss / with dups",
        lambda r: f"{r['loss']['clients_with_loss']} / {r['loss']['clients_with_dup']}",
        None,
    ),
    ("worst client (lost, dup)", lambda r: _worst(r), None),
    (
        "drops / reconnects / churned",
        lambda r: "{drops} / {reconnects} / {churned}".format(**r["connections"]),
        None,
    ),
    (
        "published items (achieved items/s)",
        lambda r: f"{r['publish']['items']} ({r['publish']['rate_achieved']})",
        None,
    ),
    ("publish errors", lambda r: r["publish"]["errors"], None),
    ("server CPU s, publish phase", lambda r: _cpu(r, "server"), "low"),
    ("server CPU us per delivery (all server processes)", lambda r: _us_per(r), "low"),
    ("load-generator CPU s, publish phase", lambda r: _cpu(r, "loadgen"), None),
    ("busiest process (core share)", lambda r: _busiest(r), None),
]


def _saturated(r):
    s = r["saturation"]
    if s["saturated_rate"] is None:
        return f"not saturated ({s['stopped_by']})"
    return f"{s['saturated_rate'] * r['config']['channels']:,.6g}: " + "; ".join(
        s["saturated_reasons"]
    )


def _late(r):
    la = r["late"]
    if not la["count"]:
        return "-"
    return f"{_fmt(la['p50_ms'])} / {_fmt(la['p99_ms'])} / {_fmt(la['max_ms'])}"


def _worst(r):
    w = r["loss"]["worst_client"]
    return f"#{w['client']} ({w['lost']}, {w['duplicated']})" if w else "-"


def _cpu(r, role):
    return round(sum(p["cpu_s"] for p in r["cpu"]["publish_phase"] if p["role"] == role), 2)


def _rest(r):
    x = r["rest"]
    return f"{x['server_core_share']:.3f} ({x['keep_alive_s'] or 'off'})"


def _us_per(r):
    """Server CPU microseconds per delivery in the publish phase: the per-message cost, which
    (unlike latency) moves little when other work on the machine takes the CPU."""
    n = r["deliveries"]["received"]
    return round(_cpu(r, "server") * 1e6 / n, 1) if n else None


def _busiest(r):
    rows = r["cpu"]["publish_phase"]
    if not rows:
        return "-"
    p = max(rows, key=lambda x: x["cpu_s"])
    return f"{p['name']} {p['cpu_util']:.2f}"


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _value(getter, r):
    try:
        return getter(r)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def ratio_of(a, b, better):
    if (
        better is None
        or not isinstance(a, (int, float))
        or not isinstance(b, (int, float))
        or not b
    ):
        return None
    return round(a / b, 2)


def ratio_pair(names: list[str]) -> tuple[str, str] | None:
    """The two targets a ratio compares, gripcast first whatever order they ran in (``--order``
    alternates; a ratio that flipped with it would read as a loss half the time); None unless
    there are two."""
    if len(names) != 2:
        return None
    a, b = names
    return (b, a) if b == "gripcast" else (a, b)


def comparison(runs: dict[str, dict]) -> dict:
    """{metric: {target: value, ..., "ratio": gripcast/other}} for the JSON record (with two
    targets: ``ratio_of`` names the pair, e.g. ``gripcast / pushpin``, in either run order)."""
    names = list(runs)
    pair = ratio_pair(names)
    out = {}
    for label, getter, better in METRICS:
        row = {n: _value(getter, runs[n]) for n in names}
        if pair is not None:
            row["ratio"] = ratio_of(row[pair[0]], row[pair[1]], better)
            row["ratio_of"] = f"{pair[0]} / {pair[1]}"
            row["better"] = better
        out[label] = row
    return out


def same_rate_p99(runs: dict[str, dict]) -> dict | None:
    """Two saturation searches side by side: each rate step both targets ran, with their p99
    and gripcast's over the other's (the issue's "p99 at most half Pushpin's at the same
    rate"), and that row at the other target's limit (its best unsaturated step).  None
    unless two targets both ran a search with a common step."""
    pair = ratio_pair(list(runs))
    if pair is None:
        return None
    mine, other = runs[pair[0]], runs[pair[1]]
    if not (mine.get("saturation") and other.get("saturation")):
        return None  # (the slow and soak scenarios have steps too, at one rate: not this)
    by_rate = {}
    for st in mine.get("steps") or []:
        if isinstance(st.get("rate"), (int, float)):
            by_rate[round(st["rate"], 9)] = st
    rows = []
    for st in other.get("steps") or []:
        try:
            twin = by_rate.get(round(st["rate"], 9))
            if twin is None:
                continue
            a, b = twin["latency_ms"]["p99"], st["latency_ms"]["p99"]
            row = {
                "rate": st["rate"],
                "msgs_per_s": st.get("msgs_per_s"),
                "offered_deliveries_per_s": st["offered_deliveries_per_s"],
                pair[0]: a,
                pair[1]: b,
                "ratio": ratio_of(a, b, "low"),
                "saturated": {
                    pair[0]: bool(twin["saturation"]["saturated"]),
                    pair[1]: bool(st["saturation"]["saturated"]),
                },
            }
        except (KeyError, TypeError):
            continue  # a step without its figures (the record is still written)
        rows.append(row)
    if not rows:
        return None
    limit = other["saturation"].get("limit_rate")  # (both have one: checked above)
    at_limit = next((r for r in rows if limit is not None and r["rate"] == limit), None)
    return {"ratio_of": f"{pair[0]} / {pair[1]}", "steps": rows, "at_other_limit": at_limit}


def print_same_rate(same: dict, console: Console) -> None:
    a, b = same["ratio_of"].split(" / ")
    t = Table(title=f"p99 at the same offered rate ({same['ratio_of']}; goal at most 0.5)")
    for col in ("msg/s", "offered deliv/s", f"{a} p99 ms", f"{b} p99 ms", same["ratio_of"]):
        t.add_column(col, justify="right")
    lim = same.get("at_other_limit")
    for r in same["steps"]:
        marks = " ".join(f"({n} saturated)" for n, v in r["saturated"].items() if v)
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        if r is lim:
            ratio += f" at {b}'s limit"
        t.add_row(
            _fmt(r["msgs_per_s"]),
            _fmt(r["offered_deliveries_per_s"]),
            _fmt(r[a]),
            _fmt(r[b]),
            f"{ratio} {marks}".strip(),
        )
    console.print(t)


def print_runs(runs: dict[str, dict], console: Console | None = None) -> None:
    console = console or Console()
    names = list(runs)
    for n in names:
        if not runs[n].get("ok"):
            console.print(f"[red]{n}: run failed: {runs[n].get('error')}[/red]")
            if runs[n].get("target_log_tail"):
                console.print(runs[n]["target_log_tail"], markup=False, highlight=False)
    ok = [n for n in names if runs[n].get("ok")]
    if not ok:
        return
    cfg = runs[ok[0]]["config"]
    title = (
        f"{cfg['scenario']}: {cfg['transport']}, {cfg['clients']} clients, {cfg['channels']} channel(s), "
        f"{cfg['rate']:g} msg/s per channel, {cfg['duration']:g} s, publisher {cfg['publisher']}"
        f"{' batch ' + str(cfg['batch']) if cfg.get('batch') else ''}, "
        f"gripcast edges {cfg['edges']}; log level {cfg.get('log_level')}, stats "
        f"{'on' if cfg.get('stats') else 'off'} on both; clients "
        f"{'resume with cursor' if cfg.get('resume') else 'reconnect without cursor'}"
        f"{', SCHED_BATCH' if cfg.get('client_sched') == 'batch' else ''}"
        f"{'; saturation search' if cfg.get('saturate') else ''}; order {' then '.join(names)}"
    )
    table = Table(title=title)
    table.add_column("metric")
    for n in ok:
        table.add_column(n, justify="right")
    pair = ratio_pair(ok)
    if pair is not None:
        table.add_column(f"{pair[0]} / {pair[1]}", justify="right")
    for label, getter, better in METRICS:
        vals = [_value(getter, runs[n]) for n in ok]
        if label.startswith(("saturation", "at rest")) and all(v is None for v in vals):
            continue  # not a saturation search / no rest phase
        cells = [_fmt(v) for v in vals]
        if pair is not None:
            by = dict(zip(ok, vals, strict=True))
            rt = ratio_of(by[pair[0]], by[pair[1]], better)
            if rt is None:
                cells.append("")
            else:
                good = rt >= 1 if better == "high" else rt <= 1
                cells.append(f"[{'green' if good else 'red'}]{rt:.2f}x[/]")
        table.add_row(label, *cells)
    console.print(table)
    for n in ok:
        if runs[n].get("saturation"):
            print_steps(n, runs[n], console)
    same = same_rate_p99({n: runs[n] for n in ok})
    if same is not None:
        print_same_rate(same, console)
    for n in ok:
        if runs[n].get("slow_effect"):
            print_slow(n, runs[n], console)
    for n in ok:
        if runs[n].get("soak"):
            print_soak(n, runs[n], console)
    for n in ok:
        print_memory(n, runs[n], console)
    for n in ok:
        r = runs[n]
        t = Table(
            title=f"{n}: CPU seconds per process, publish phase ({r['cpu']['publish_phase_wall_s']:.1f} s wall;"
            f" core share 1.00 = one core saturated)"
        )
        for col in ("role", "process", "pid", "CPU s", "core share", "connect-phase CPU s"):
            t.add_column(col, justify="right" if col not in ("role", "process") else "left")
        connect = {p["pid"]: p["cpu_s"] for p in r["cpu"]["connect_phase"]}
        for p in r["cpu"]["publish_phase"]:
            t.add_row(
                p["role"],
                p["name"],
                str(p["pid"]),
                f"{p['cpu_s']:.2f}",
                f"{p['cpu_util']:.2f}" if p["cpu_util"] is not None else "-",
                f"{connect.get(p['pid'], 0):.2f}",
            )
        console.print(t)
        if "edge_kill" in r:
            console.print(f"{n}: edge kill: {r['edge_kill']}")


def print_steps(name: str, r: dict, console: Console) -> None:
    """The saturation search of one target: one row per rate step."""
    s = r["saturation"]
    t = Table(
        title=f"{name}: saturation search (stopped: {s['stopped_by']}; limit "
        f"{_fmt(s['limit_deliveries_per_s'])} deliveries/s)"
    )
    for col in (
        "msg/s",
        "offered deliv/s",
        "deliv/s",
        "on time",
        "p50 ms",
        "p99 ms",
        "max ms",
        "late",
        "lost",
        "publisher items/s",
        "server CPU us/deliv",
        "verdict",
    ):
        t.add_column(col, justify="left" if col == "verdict" else "right")
    for st in r["steps"]:
        d = st["deliveries"]
        v = st["saturation"]
        verdict = "; ".join(v["reasons"]) or "ok"
        if v["loadgen_limited"]:
            verdict += f" (load generator: {v['note']})"
        if v.get("idle_target"):
            verdict += f" ({v['idle_target']}: the machine's load?)"
        t.add_row(
            _fmt(st["msgs_per_s"]),
            _fmt(st["offered_deliveries_per_s"]),
            _fmt(d["per_s"]),
            f"{d['on_time'] / d['expected']:.1%}" if d["expected"] else "-",
            _fmt(st["latency_ms"]["p50"]),
            _fmt(st["latency_ms"]["p99"]),
            _fmt(st["latency_ms"]["max"]),
            _fmt(st["late"]["count"]),
            _fmt(st["loss"]["lost"]),
            _fmt(st["publish"]["rate_achieved"]),
            _fmt(_us_per(st)),
            verdict,
        )
    console.print(t)


def print_slow(name: str, r: dict, console: Console) -> None:
    """Slow readers: the fast clients without / with the slow ones slowed, and the slow ones."""
    e = r["slow_effect"]
    t = Table(
        title=f"{name}: slow readers (goal: the others keep 90%: "
        f"{'met' if e['goal_met'] else 'NOT met'})"
    )
    for col in ("step", "fast deliv/s", "fast on time", "fast p50 ms", "fast p99 ms", "fast lost"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for st in r["steps"]:
        d = st["deliveries"]
        t.add_row(
            "slow readers slowed" if st.get("slowed") else "all read at full speed",
            _fmt(d["per_s"]),
            f"{d['on_time'] / d['expected']:.1%}" if d["expected"] else "-",
            _fmt(st["latency_ms"]["p50"]),
            _fmt(st["latency_ms"]["p99"]),
            _fmt(st["loss"]["lost"]),
        )
    console.print(t)
    s = e["slow_readers"] or {}
    console.print(
        f"{name}: fast clients kept {_fmt(e['fast_throughput_kept'])} of their deliveries/s, "
        f"p99 x{_fmt(e['fast_p99_ratio'])}; slow readers ({s.get('clients')} at "
        f"{s.get('bytes_per_s')} B/s): cut {s.get('drops')} times, received "
        f"{s.get('received')} of {s.get('expected')}, lost {s.get('lost')}, duplicated "
        f"{s.get('duplicated')}, resumed {s.get('resumed')}, p99 {_fmt(s.get('p99_ms'))} ms"
    )
    apart = r.get("config", {}).get("slow_apart")
    for st in r["steps"]:
        roles = st.get("loadgen_roles") or {}
        shown = ", ".join(
            f"{k} {v['cpu_s']} s (busiest {v['busiest_core_share']})"
            for k, v in roles.items()
            if k in ("workers", "slow_workers")
        )
        console.print(
            f"{name}: {'slowed' if st.get('slowed') else 'full speed'}: load-generator CPU while "
            f"publishing ({'slow readers apart' if apart else 'slow readers mixed in'}): {shown}"
        )


def print_soak(name: str, r: dict, console: Console) -> None:
    v = r["soak"]
    t = Table(
        title=f"{name}: soak, {len(r['steps'])} steps "
        f"({'ok' if v['ok'] else 'FAILED: ' + '; '.join(v.get('problems', []))})"
    )
    cols = ("process", "RSS KiB after warm-up", "RSS KiB last", "growth", "fds", "fds last")
    for col in cols + ("trio tasks", "tasks last", "tasks max"):
        t.add_column(col, justify="left" if col == "process" else "right")
    for p in v["processes"]:
        t.add_row(
            p["name"],
            _fmt(p["rss_kib_after_warmup"]),
            _fmt(p["rss_kib_last"]),
            f"{p['rss_growth']:+.1%}",
            _fmt(p["fds_after_warmup"]),
            _fmt(p["fds_last"]),
            _fmt(p.get("tasks_after_warmup")),
            _fmt(p.get("tasks_last")),
            _fmt(p.get("tasks_max")),
        )
    console.print(t)


def print_memory(name: str, r: dict, console: Console) -> None:
    """RSS of every process of the target's tree, before/after the connections, per connection."""
    m = r["memory"]
    t = Table(
        title=f"{name}: memory over the whole process tree ({m['processes']} processes; "
        f"{_fmt(m['per_conn_kib'])} KiB per connection in all)"
    )
    for col in ("process", "pid", "RSS before KiB", "RSS after KiB", "KiB per connection"):
        t.add_column(col, justify="left" if col == "process" else "right")
    for p in m["by_process"]:
        t.add_row(
            p["name"],
            str(p["pid"]),
            _fmt(p["before_kib"]),
            _fmt(p["after_kib"]),
            _fmt(p.get("per_conn_kib")),
        )
    console.print(t)


# what TLS costs a target: HTTPS / plain HTTP of these, from the same ``--tls`` invocation
TLS_METRICS = [
    ("connections/s while establishing", lambda r: r["connect"]["rate_per_s"], "high"),
    ("deliveries/s (received / time to receive)", lambda r: r["deliveries"]["per_s"], "high"),
    (
        "deliveries/s (median second while publishing)",
        lambda r: r["deliveries"]["per_s_steady_median"],
        "high",
    ),
    ("latency p50 ms", lambda r: r["latency_ms"]["p50"], "low"),
    ("latency p99 ms", lambda r: r["latency_ms"]["p99"], "low"),
    ("memory per held connection KiB", lambda r: r["memory"]["per_conn_kib"], "low"),
    ("server CPU s, publish phase", lambda r: _cpu(r, "server"), "low"),
    ("server CPU s, connect phase", lambda r: _cpu_connect(r), "low"),
]


def _cpu_connect(r):
    rows = r["cpu"]["connect_phase"]
    return round(sum(p["cpu_s"] for p in rows if p.get("role") == "server"), 2)


def tls_cost(runs: dict[str, dict]) -> dict:
    """{metric: {target: HTTPS / HTTP ratio, ...}} for every target run both ways."""
    out: dict[str, dict] = {}
    for label, getter, better in TLS_METRICS:
        row = {}
        for name in runs:
            tls = runs.get(name + "+tls")
            if tls is None or not runs[name].get("ok") or not tls.get("ok"):
                continue
            row[name] = ratio_of(_value(getter, tls), _value(getter, runs[name]), better)
        out[label] = row
    return out


def print_tls_cost(runs: dict[str, dict], console: Console | None = None) -> None:
    console = console or Console()
    cost = tls_cost(runs)
    names = [n for n in runs if n + "+tls" in runs]
    table = Table(title="TLS cost: HTTPS / plain HTTP, same invocation (1.00 = free)")
    table.add_column("metric")
    for n in names:
        table.add_column(n, justify="right")
    for label, _, _ in TLS_METRICS:
        table.add_row(label, *[_fmt(cost[label].get(n)) for n in names])
    console.print(table)


def print_ingest(r: dict, console: Console | None = None) -> None:
    console = console or Console()
    if not r.get("ok") and "items_per_s" not in r:
        console.print(f"[red]ingest failed: {r.get('error')}[/red]")
        if r.get("target_log_tail"):
            console.print(r["target_log_tail"], markup=False, highlight=False)
        return
    batch = f", batch {r['batch']}" if r["publisher"] in ("http", "zmq-msgpack") else ""
    t = Table(title=f"broker ingest: {r['items']} items over {r['publisher']}{batch}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("items received on the fan-out SUB", _fmt(r["received"]))
    t.add_row("elapsed s (first send .. last received)", _fmt(r["elapsed_s"]))
    t.add_row("items/s (processed and fanned out)", _fmt(r["items_per_s"]))
    if r.get("items_per_broker_cpu_s"):
        t.add_row("items per broker CPU second", _fmt(r["items_per_broker_cpu_s"]))
    if r.get("acked_per_s"):
        t.add_row("items/s acknowledged (HTTP)", _fmt(r["acked_per_s"]))
    for p in r["cpu"]:
        t.add_row(
            f"CPU s {p['role']}: {p['name']} (core share)",
            f"{p['cpu_s']:.2f} ({p['cpu_util']:.2f})",
        )
    console.print(t)
    if not r.get("ok"):
        console.print(f"[red]{r.get('error')}[/red]")


def write_json(record: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def save_results(record: dict, out: str, name: str) -> Path:
    """Write a scenario's record to ``out``, or to ``bench/results/<name>-<time>.json`` when
    no path was given; say where."""
    from bench.cli import RESULTS_DIR

    path = Path(out) if out else RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(record, path)
    print(f"results: {path}")
    return path


def plot(runs: dict[str, dict], stem: Path) -> list[Path]:
    """Two PNGs beside the JSON: latency over time and deliveries/s over time, one line per target."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ok = {n: r for n, r in runs.items() if r.get("ok") and r.get("series")}
    if not ok:
        return []
    out = []
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for n, r in ok.items():
        s = r["series"]
        ts = [p["t"] for p in s]
        (line,) = ax.plot(ts, [p["p50_ms"] for p in s], label=f"{n} p50")
        ax.plot(
            ts, [p["p99_ms"] for p in s], linestyle="--", color=line.get_color(), label=f"{n} p99"
        )
        ax.plot(
            ts, [p["max_ms"] for p in s], linestyle=":", color=line.get_color(), label=f"{n} max"
        )
    ax.set_yscale("log")
    ax.set_xlabel("seconds since publishing started (by receive time)")
    ax.set_ylabel("publish-to-receive latency, ms")
    ax.set_title("latency over time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    p = stem.with_name(stem.name + "-latency.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for n, r in ok.items():
        s = r["series"]
        ax.plot([p["t"] for p in s], [p["deliveries"] for p in s], marker=".", label=n)
    ax.set_xlabel("seconds since publishing started (by receive time)")
    ax.set_ylabel("deliveries per second")
    ax.set_title("deliveries/s over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    p = stem.with_name(stem.name + "-deliveries.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    soaked = {n: r for n, r in runs.items() if r.get("ok") and r.get("soak")}
    if soaked:
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.5))
        for n, r in soaked.items():
            names = sorted({p["name"] for st in r["steps"] for p in st.get("resources", [])})
            for name in names:
                pts = [
                    (i + 1, p)
                    for i, st in enumerate(r["steps"])
                    for p in st.get("resources", [])
                    if p["name"] == name
                ]
                a1.plot(
                    [i for i, _ in pts],
                    [p["rss_kib"] / 1024 for _, p in pts],
                    "o-",
                    label=f"{n} {name}",
                )
                a2.plot([i for i, _ in pts], [p["fds"] for _, p in pts], "o-", label=f"{n} {name}")
                tk = [(i, p["tasks"]) for i, p in pts if p.get("tasks") is not None]
                if tk:
                    a3.plot([i for i, _ in tk], [k for _, k in tk], "o-", label=f"{n} {name}")
        a1.set_ylabel("RSS, MiB")
        a2.set_ylabel("open file descriptors")
        a3.set_ylabel("trio tasks alive (gripcast)")
        for a in (a1, a2, a3):
            a.set_xlabel("soak step (one sample interval each)")
            a.grid(True, alpha=0.3)
            a.legend(fontsize="x-small")
        a1.set_title("soak: RSS per process")
        a2.set_title("soak: open files per process")
        a3.set_title("soak: trio tasks per process")
        fig.tight_layout()
        p = stem.with_name(stem.name + "-soak.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    searched = {n: r for n, r in runs.items() if r.get("ok") and r.get("saturation")}
    if searched:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        for n, r in searched.items():
            xs = [st["offered_deliveries_per_s"] for st in r["steps"]]
            (line,) = a1.plot(xs, [st["deliveries"]["per_s"] for st in r["steps"]], "o-", label=n)
            a2.plot(
                xs,
                [st["latency_ms"]["p99"] for st in r["steps"]],
                "o-",
                color=line.get_color(),
                label=f"{n} p99",
            )
        lim = max(
            max(st["offered_deliveries_per_s"] for st in r["steps"]) for r in searched.values()
        )
        a1.plot([0, lim], [0, lim], ":", color="grey", label="offered")
        a1.set_xlabel("offered deliveries/s")
        a1.set_ylabel("deliveries/s achieved")
        a1.set_title("saturation search: throughput")
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("offered deliveries/s")
        a2.set_ylabel("p99 latency, ms")
        a2.set_title("saturation search: p99")
        for a in (a1, a2):
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize="small")
        fig.tight_layout()
        p = stem.with_name(stem.name + "-saturation.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out
