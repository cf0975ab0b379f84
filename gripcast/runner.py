"""``gripcast run``: one broker and N edges (and the demo origin) as supervised children.

Each child is ``python -m gripcast <role> --config-json <resolved config>``, with its own
sd_notify socket so the runner knows when each one is ready.  A child that exits while the
runner is not stopping is reported and restarted (backoff 1 s doubling to 30 s, reset after a
minute of health).  SIGINT/SIGTERM: every child gets SIGTERM, then SIGKILL after
``STOP_GRACE_S``.  Children's stdout and stderr are the runner's (one merged log).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field

import trio

from broker.config import Config
from broker.sdnotify import notify

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0


@dataclass(slots=True)
class Child:
    name: str
    argv: list[str]
    notify_path: str
    ready: trio.Event = field(default_factory=trio.Event)
    process: trio.Process | None = None
    restarts: int = 0


def child_argv(role: str, cfg: Config, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gripcast", role, *extra, "--config-json", json.dumps(cfg.to_dict())]


def plan_children(cfg: Config, demo: bool, demo_port: int | None, rundir: str) -> tuple[Config, list[Child]]:
    """Decide which children to run (and the config they share)."""
    children = []
    if demo:
        port = demo_port if demo_port is not None else 8090 + cfg.port_offset
        publish_url = f"http://{cfg.broker_host}:{cfg.port('http_port')}"
        if not cfg.routes and not cfg.routes_file:
            # the chat's WebSocket endpoint speaks WebSocket-over-HTTP; the rest is plain HTTP
            cfg = cfg.replace(routes=(f"*,path_beg=/chat/ws 127.0.0.1:{port},over_http",
                                      f"* 127.0.0.1:{port}"))
        else:
            log.warning("demo origin runs on 127.0.0.1:%d but your routes are used", port)
        argv = [sys.executable, "-m", "gripcast", "demo-origin", "--listen", f"127.0.0.1:{port}",
                "--publish-url", publish_url]
        children.append(Child("demo", argv, os.path.join(rundir, "demo.sock")))
    children.append(Child("broker", child_argv("broker", cfg), os.path.join(rundir, "broker.sock")))
    for i in range(cfg.edge_count):
        children.append(Child(f"edge{i}", child_argv("edge", cfg, "--index", str(i)),
                              os.path.join(rundir, f"edge{i}.sock")))
    return cfg, children


async def _supervise(child: Child, stopping: trio.Event) -> None:
    backoff = 1.0
    env = dict(os.environ, NOTIFY_SOCKET=child.notify_path, PYTHONUNBUFFERED="1")
    while not stopping.is_set():
        started = trio.current_time()
        child.process = await trio.lowlevel.open_process(child.argv, env=env)
        log.info("started %s pid=%d", child.name, child.process.pid)
        code = await child.process.wait()
        if stopping.is_set():
            log.info("%s stopped code=%s", child.name, code)
            return
        if trio.current_time() - started > HEALTHY_AFTER_S:
            backoff = 1.0
        child.restarts += 1
        log.error("%s exited unexpectedly code=%s; restarting in %.0fs (restart #%d)",
                  child.name, code, backoff, child.restarts)
        with trio.move_on_after(backoff):
            await stopping.wait()
        backoff = min(backoff * 2, BACKOFF_MAX_S)


async def _stop_all(children: list[Child]) -> None:
    for c in children:
        if c.process is not None and c.process.returncode is None:
            c.process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE_S):
        for c in children:
            if c.process is not None:
                await c.process.wait()
    for c in children:
        if c.process is not None and c.process.returncode is None:
            log.warning("%s did not stop in %.0fs; killing pid=%d", c.name, STOP_GRACE_S, c.process.pid)
            c.process.kill()
            await c.process.wait()


def _banner(cfg: Config, children: list[Child]) -> str:
    host = cfg.client_addr if cfg.client_addr not in ("0.0.0.0", "::", "") else "127.0.0.1"
    lines = [
        f"gripcast ready: {sum(c.name.startswith('edge') for c in children)} edge(s) + broker",
        f"  clients     http://{host}:{cfg.port('client_port')}/",
        f"  publish     http://{cfg.broker_host}:{cfg.port('http_port')}/publish/  "
        f"(zmq push {cfg.endpoint('push_in', bind=False)})",
    ]
    if any(c.name == "demo" for c in children):
        lines += [
            "  demo        try: curl -N http://%s:%d/stream   then: gripcast publish%s test hello"
            % (host, cfg.port("client_port"),
               f" --port-offset {cfg.port_offset}" if cfg.port_offset else ""),
        ]
    return "\n".join(lines)


async def serve_cluster(cfg: Config, demo: bool = False, demo_port: int | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="gripcast-run-") as rundir:
        cfg, children = plan_children(cfg, demo, demo_port, rundir)
        stopping = trio.Event()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for c in children:
                    await nursery.start(_start_watch, c)
                for c in children:
                    nursery.start_soon(_supervise, c, stopping)

                async def announce() -> None:
                    for c in children:
                        await c.ready.wait()
                    print(_banner(cfg, children), file=sys.stderr, flush=True)
                    notify("READY=1")

                nursery.start_soon(announce)
                async for signum in signals:
                    log.info("received %s: stopping all children", signal.Signals(signum).name)
                    break
                stopping.set()
                notify("STOPPING=1")
                await _stop_all(children)
                nursery.cancel_scope.cancel()


async def _start_watch(child: Child, task_status=trio.TASK_STATUS_IGNORED) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(child.notify_path)
    task_status.started()
    with sock:
        while True:
            data = await sock.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                child.ready.set()


def run_cluster(cfg: Config, demo: bool = False, demo_port: int | None = None) -> int:
    trio.run(serve_cluster, cfg, demo, demo_port)
    return 0
