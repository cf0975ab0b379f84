"""``gripcast run``: one broker and N edges (and the demo origin) as supervised children.

``--brokers N`` (N > 1, with a Redis store: docs/cluster.md) starts N brokers instead: broker
``i`` on the default broker ports plus ``10 * i`` (on top of ``--port-offset``), each with its
own config file, and the edges list them all (``brokers``).

Before anything starts, ``gripcast.preflight`` checks the routes and that every port is free; a
problem ends the start at once (exit status ``EXIT_CONFIG``).  Each child is
``python -m gripcast <role> --config-file <path>``: the resolved config (secrets included) is
in a mode-0600 file inside the runner's private (0700) run directory, never on a command line
where any local user could read it in ``/proc/<pid>/cmdline``.  Every start gets a fresh
``cluster_id``, which edges check in the broker's ``hello`` so they only ever join their own
runner's broker.

Each child has its own sd_notify socket so the runner knows when it is ready; once all are, the
ready banner is printed, last and set apart.  A child that crashes while the runner is not
stopping is reported and restarted (backoff 1 s doubling to 30 s, reset after a minute of
health).  A child that exits with ``EXIT_CONFIG`` (or 2, a usage error) is not restarted: a
restart cannot fix a configuration, so the runner stops the others and exits with that status.
SIGINT (Ctrl-C, to the runner or its whole process group) and SIGTERM stop every child
(SIGTERM, then SIGKILL after ``STOP_GRACE_S``) and the runner exits 0, with one ``stopped``
line per child.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field

import trio

from broker.config import Config
from broker.errors import EXIT_CONFIG, ConfigError
from broker.runtime.procsignals import ignore_late_stop_signals, ignore_stop_signals_for_exit
from broker.runtime.sdnotify import notify

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
CLEAN_EXIT_GRACE_S = 2.0
FATAL_CODES = frozenset({EXIT_CONFIG, 2})  # configuration / usage errors: never restarted
BROKER_PORT_STEP = 10  # broker i listens on the broker ports + 10 * i (``--brokers N``)
BROKER_PORT_KEYS = (
    "push_in_port",
    "http_port",
    "sub_in_port",
    "command_port",
    "edge_pub_port",
    "edge_ctl_port",
)


@dataclass(slots=True)
class Child:
    name: str
    argv: list[str]
    notify_path: str
    ready: trio.Event = field(default_factory=trio.Event)
    process: trio.Process | None = None
    restarts: int = 0


@dataclass(slots=True)
class RunState:
    """What the supervisors share: stop requested, and the exit status of the runner."""

    stopping: trio.Event = field(default_factory=trio.Event)
    exit_code: int = 0


def broker_config(cfg: Config, index: int) -> Config:
    """Broker ``index``'s config under ``--brokers N``: every broker port (and the broker's
    metrics port, when on) moved by ``10 * index``."""
    if index == 0:
        return cfg
    shift = BROKER_PORT_STEP * index
    changes: dict[str, int] = {key: cfg.port(key) + shift for key in BROKER_PORT_KEYS}
    if cfg.metrics_port:
        changes["metrics_port"] = cfg.metrics_port + shift
    return cfg.replace(**changes)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def cluster_config(cfg: Config, brokers: int | None) -> Config:
    """The runner's config for ``--brokers`` (None: not given); raises ConfigError."""
    if brokers is None:
        if cfg.brokers:
            raise ConfigError(
                [
                    "brokers: gripcast run starts its brokers itself (--brokers N); the brokers "
                    "list is for gripcast edge / gripcast broker on separate hosts"
                ]
            )
        return cfg
    problems = []
    if brokers < 1:
        problems.append(f"--brokers: {brokers} (must be 1 or more)")
    if brokers > 1:
        if cfg.port("edge_ctl_port") != cfg.port("edge_pub_port") + 1:
            problems.append(
                "--brokers: edge_ctl_port must be edge_pub_port + 1 (a brokers entry "
                "host:port names the edge_pub port; edge_ctl is the next one)"
            )
        if cfg.stats_spec:
            problems.append(
                "--brokers: stats_spec would be bound by every broker; run the brokers "
                "separately (gripcast broker, one stats_spec each)"
            )
    if problems:
        raise ConfigError(problems)
    if brokers == 1:
        return cfg.replace(brokers=())
    host = _host(cfg.broker_host)
    pub = cfg.port("edge_pub_port")
    return cfg.replace(
        brokers=tuple(f"{host}:{pub + BROKER_PORT_STEP * i}" for i in range(brokers))
    )


def write_config_file(cfg: Config, rundir: str, name: str = "config.json") -> str:
    """The resolved config as a 0600 JSON file in ``rundir`` (created 0700 by mkdtemp)."""
    path = os.path.join(rundir, name)
    if os.path.lexists(path):
        os.unlink(path)  # a new plan (tests plan twice); never write through an old file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(cfg.to_dict(), fh)
    return path


def child_argv(role: str, config_path: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gripcast", role, *extra, "--config-file", config_path]


def demo_port_for(cfg: Config, demo: bool, demo_port: int | None) -> int | None:
    if not demo:
        return None
    return demo_port if demo_port is not None else 8090 + cfg.port_offset


def plan_children(
    cfg: Config, demo: bool, demo_port: int | None, rundir: str
) -> tuple[Config, list[Child]]:
    """Decide which children to run (and the config they share, written to ``rundir``)."""
    children = []
    port = demo_port_for(cfg, demo, demo_port)
    if port is not None:
        publish_url = f"http://{cfg.broker_host}:{cfg.port('http_port')}"
        if not cfg.routes and not cfg.routes_file:
            # the chat's WebSocket endpoint speaks WebSocket-over-HTTP; the rest is plain HTTP
            cfg = cfg.replace(
                routes=(f"*,path_beg=/chat/ws 127.0.0.1:{port},over_http", f"* 127.0.0.1:{port}")
            )
        else:
            log.warning("demo origin runs on 127.0.0.1:%d but your routes are used", port)
        argv = [
            sys.executable,
            "-m",
            "gripcast",
            "demo-origin",
            "--listen",
            f"127.0.0.1:{port}",
            "--publish-url",
            publish_url,
            "--publish-command",
            publish_command(cfg),
        ]
        children.append(Child("demo", argv, os.path.join(rundir, "demo.sock")))
    if not cfg.cluster_id:
        cfg = cfg.replace(cluster_id=secrets.token_hex(8))
    path = write_config_file(cfg, rundir)
    if len(cfg.brokers) <= 1:
        children.append(
            Child("broker", child_argv("broker", path), os.path.join(rundir, "broker.sock"))
        )
    else:
        for i in range(len(cfg.brokers)):
            bpath = write_config_file(broker_config(cfg, i), rundir, f"config-broker{i}.json")
            children.append(
                Child(
                    f"broker{i}",
                    child_argv("broker", bpath),
                    os.path.join(rundir, f"broker{i}.sock"),
                )
            )
    for i in range(cfg.edge_count):
        children.append(
            Child(
                f"edge{i}",
                child_argv("edge", path, "--index", str(i)),
                os.path.join(rundir, f"edge{i}.sock"),
            )
        )
    return cfg, children


def gripcast_command() -> str:
    """How the user can run ``gripcast`` from their shell: the venv's script, relative to the
    working directory when it is below it (``.venv/bin/gripcast``), unless it is on PATH."""
    script = os.path.join(os.path.dirname(sys.executable), "gripcast")
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and os.path.realpath(os.path.join(d, "gripcast")) == os.path.realpath(script):
            return "gripcast"
    rel = os.path.relpath(script)
    return rel if not rel.startswith("..") else script


def publish_command(cfg: Config) -> str:
    offset = f" --port-offset {cfg.port_offset}" if cfg.port_offset else ""
    return f"{gripcast_command()} publish{offset} test hello"


async def _supervise(child: Child, state: RunState) -> None:
    backoff = 1.0
    env = dict(os.environ, NOTIFY_SOCKET=child.notify_path, PYTHONUNBUFFERED="1")
    while not state.stopping.is_set():
        started = trio.current_time()
        child.process = await trio.lowlevel.open_process(child.argv, env=env)
        log.info("started %s pid=%d", child.name, child.process.pid)
        code = await child.process.wait()
        if code == 0 and not state.stopping.is_set():
            # a child exits 0 only on a stop signal: Ctrl-C reaches the whole process group,
            # and a quick child may finish before the runner has read its own SIGINT
            with trio.move_on_after(CLEAN_EXIT_GRACE_S):
                await state.stopping.wait()
        if state.stopping.is_set():
            return  # _stop_all reports it
        if code in FATAL_CODES:
            log.error(
                "%s stopped: configuration error (exit status %d, see its log above); "
                "not restarting, stopping the others",
                child.name,
                code,
            )
            state.exit_code = code
            state.stopping.set()
            return
        if trio.current_time() - started > HEALTHY_AFTER_S:
            backoff = 1.0
        child.restarts += 1
        log.error(
            "%s exited unexpectedly code=%s; restarting in %.0fs (restart #%d)",
            child.name,
            code,
            backoff,
            child.restarts,
        )
        with trio.move_on_after(backoff):
            await state.stopping.wait()
        backoff = min(backoff * 2, BACKOFF_MAX_S)


async def _stop_all(children: list[Child]) -> None:
    running = [
        c.process for c in children if c.process is not None and c.process.returncode is None
    ]
    for process in running:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE_S):
        for process in running:
            await process.wait()
    for c in children:
        if c.process is None:
            continue
        if c.process.returncode is None:
            log.warning(
                "%s did not stop in %.0fs; killing pid=%d", c.name, STOP_GRACE_S, c.process.pid
            )
            c.process.kill()
            await c.process.wait()
        code = c.process.returncode
        if code == 0:
            log.info("%s stopped", c.name)
        else:
            log.warning("%s stopped code=%s", c.name, code)


def banner(cfg: Config, children: list[Child]) -> str:
    host = cfg.client_addr if cfg.client_addr not in ("0.0.0.0", "::", "") else "127.0.0.1"
    client = f"http://{host}:{cfg.port('client_port')}"
    edges = sum(c.name.startswith("edge") for c in children)
    brokers = max(1, len(cfg.brokers))
    rule = "=" * 72
    lines = [
        "",
        rule,
        f"gripcast is ready: {brokers} broker{'s' if brokers > 1 else ''}, {edges} edge(s)",
        f"  clients  {client}/",
    ]
    for i in range(brokers):
        b = broker_config(cfg, i)
        lines.append(
            f"  publish  http://{b.broker_host}:{b.port('http_port')}/publish/  "
            f"(ZeroMQ PUSH {b.endpoint('push_in', bind=False)})"
        )
    if any(c.name == "demo" for c in children):
        lines += [
            "",
            "Try it, in another terminal:",
            f"  curl -N {client}/stream",
            f"  {publish_command(cfg)}",
            f"or open {client}/ in a browser.  Ctrl-C stops everything.",
        ]
    else:
        lines += ["Ctrl-C stops everything."]
    lines.append(rule)
    return "\n".join(lines)


async def serve_cluster(cfg: Config, demo: bool = False, demo_port: int | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="gripcast-run-") as rundir:
        cfg, children = plan_children(cfg, demo, demo_port, rundir)
        state = RunState()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for c in children:
                    await nursery.start(_start_watch, c)
                for c in children:
                    nursery.start_soon(_supervise, c, state)

                async def announce() -> None:
                    for c in children:
                        await c.ready.wait()
                    print(banner(cfg, children), file=sys.stderr, flush=True)
                    notify("READY=1")

                async def wait_signal() -> None:
                    async for signum in signals:
                        log.info("received %s: stopping all children", signal.Signals(signum).name)
                        break
                    state.stopping.set()

                nursery.start_soon(announce)
                nursery.start_soon(wait_signal)
                await state.stopping.wait()
                notify("STOPPING=1")
                await _stop_all(children)
                nursery.cancel_scope.cancel()
        return state.exit_code


async def _start_watch(
    child: Child, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(child.notify_path)
    task_status.started()
    with sock:
        while True:
            data = await sock.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                child.ready.set()


def run_cluster(
    cfg: Config, demo: bool = False, demo_port: int | None = None, brokers: int | None = None
) -> int:
    from gripcast.preflight import preflight

    cfg = cluster_config(cfg, brokers)  # raises ConfigError
    preflight(cfg, demo_port_for(cfg, demo, demo_port))  # raises ConfigError
    ignore_late_stop_signals()
    code: int = trio.run(serve_cluster, cfg, demo, demo_port)
    ignore_stop_signals_for_exit()
    return code
