"""The ``gripcast`` command: flags -> frozen Config -> one of the processes.

    gripcast run [--edges N] [--demo]     broker + N edges (+ demo origin), supervised
    gripcast broker                       one broker process (what systemd runs)
    gripcast edge [--index I]             one edge process (what systemd runs)
    gripcast publish CHANNEL TEXT         publish over the HTTP API, like pushpin-publish
    gripcast demo-origin [--listen P]     the built-in demo origin app alone
    gripcast keygen [--out PREFIX]        a CurveZMQ key pair (docs/multihost.md)
    gripcast migrate PUSHPIN_CONF         print the gripcast.toml equivalent to a pushpin.conf
    gripcast channels [PREFIX]            live channels with subscriber counts (channel API)
    gripcast history CHANNEL [--after ID] a channel's retained messages (channel API)

Options shared with Pushpin's runner: --config FILE (TOML), --port [addr:]port, --route LINE
(repeatable), --port-offset N.  No protocol logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from broker.config import Config, config_from_dict, load_config
from broker.errors import EXIT_CONFIG, ConfigError
from broker.runtime.logsetup import configure_logging, twins_description

log = logging.getLogger("gripcast")


_EPILOG = (
    "Docs: README.md and docs/ in the gripcast source; every config key: deploy/gripcast.toml."
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (every key, with its default: deploy/gripcast.toml)",
    )
    p.add_argument(
        "--pushpin-config",
        metavar="FILE",
        help="read Pushpin's pushpin.conf (and the routes file it names) instead of --config; "
        "see docs/migrating-from-pushpin.md",
    )
    p.add_argument(
        "--port", metavar="[ADDR:]PORT", help="client listener of the edges (default 0.0.0.0:7999)"
    )
    p.add_argument(
        "--route",
        metavar="LINE",
        action="append",
        default=None,
        help='route line in Pushpin syntax, e.g. "* 127.0.0.1:8080" (repeatable; '
        "replaces the routes of the config file)",
    )
    p.add_argument("--routes-file", metavar="FILE", help="Pushpin-style routes file")
    p.add_argument(
        "--https-port",
        metavar="[ADDR:]PORT",
        action="append",
        default=None,
        help="HTTPS listener of the edges (repeatable; replaces https_port of the config; "
        "needs --tls-cert/--tls-key or tls_certs_dir; docs/tls.md)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument(
        "--port-offset",
        type=int,
        metavar="N",
        help="add N to every default port (client and broker) and to every HTTPS port, "
        "like Pushpin's",
    )
    p.add_argument(
        "--broker-host",
        metavar="HOST",
        help="where edges and tools reach the broker (default 127.0.0.1)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default info); logs go to standard error",
    )
    p.add_argument(
        "--store",
        metavar="memory|redis://HOST:PORT/DB",
        help="broker history store (default memory; see docs/reliability.md)",
    )
    # the resolved config, from the runner: a 0600 file, so secrets stay off command lines
    p.add_argument("--config-file", dest="config_file", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    from gripcast.publish import add_target_options  # publish's --url/--port-offset/--key/--iss

    parser = argparse.ArgumentParser(
        prog="gripcast",
        description="gripcast: a realtime push cluster that speaks GRIP (Pushpin's protocol). "
        "Edges hold client connections and proxy to your origin app; the broker "
        "sequences, retains and fans out published messages.",
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="start a broker and N edges (and the demo origin), supervised",
        description="Start one broker and N edges as child processes, supervise them (a crashed "
        "child is restarted; a configuration error stops everything), and stop them "
        "all on Ctrl-C or SIGTERM. Routes, ports and config are checked first.",
        epilog=_EPILOG,
    )
    _add_common(p)
    p.add_argument("--edges", type=int, metavar="N", help="edge processes (default: one per CPU)")
    p.add_argument(
        "--brokers",
        type=int,
        metavar="N",
        default=None,
        help="broker processes (default 1); N > 1 needs --store redis://... (broker i on the "
        "broker ports + 10*i; docs/cluster.md)",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="also start the demo origin app and route every request to it",
    )
    p.add_argument(
        "--demo-port",
        type=int,
        default=None,
        metavar="PORT",
        help="demo origin port (default 8090 + port offset)",
    )

    p = sub.add_parser(
        "broker",
        help="run one broker process (what the systemd unit runs)",
        description="Run one broker: the publish API (HTTP and ZeroMQ), the "
        "sequencer, history and the fan-out to edges.",
        epilog=_EPILOG,
    )
    _add_common(p)

    p = sub.add_parser(
        "edge",
        help="run one edge process (what the systemd unit runs)",
        description="Run one edge: hold client connections, proxy to the origin "
        "and deliver what the broker publishes.",
        epilog=_EPILOG,
    )
    _add_common(p)
    p.add_argument(
        "--index",
        type=int,
        default=0,
        metavar="I",
        help="edge index, for logs, metrics ports and stats (default 0)",
    )

    p = sub.add_parser(
        "publish",
        help="publish a message over the HTTP API (like pushpin-publish)",
        description="Publish one message to CHANNEL through the broker's HTTP publish API, in "
        "every format at once (HTTP stream, long-poll response, WebSocket message). "
        "Without TEXT, the message is read from standard input when it is not a "
        "terminal (echo hi | gripcast publish test).",
        epilog="Without --sse, the text is sent as is: an SSE client (EventSource) ignores "
        "lines that are not 'data:' fields, so use --sse for /events-style streams.",
    )
    p.add_argument("channel", metavar="CHANNEL", help="channel to publish to")
    p.add_argument(
        "text",
        nargs="?",
        default=None,
        metavar="TEXT",
        help="message text (a newline is appended; default: standard input)",
    )
    add_target_options(p)
    p.add_argument(
        "--id",
        dest="item_id",
        metavar="ID",
        help="the item's id (Pushpin's id: de-duplication and SSE id)",
    )
    p.add_argument(
        "--prev-id",
        metavar="ID",
        help="id of the previous item on the channel (Pushpin's ordering)",
    )
    p.add_argument("--no-eol", action="store_true", help="do not append a newline")
    p.add_argument(
        "--sse",
        action="store_true",
        help="format the text as one Server-Sent Event (data: lines, with its id)",
    )
    p.add_argument(
        "--close",
        action="store_true",
        help="send the close action instead (ends streams and WebSockets)",
    )

    _add_channel_commands(sub)
    _add_presence(sub)

    p = sub.add_parser(
        "keygen",
        help="print a CurveZMQ key pair (Z85) for multi-host setups",
        description="Make a CurveZMQ key pair (see docs/multihost.md).",
    )
    p.add_argument(
        "--out",
        metavar="PREFIX",
        help="write PREFIX.key (secret, mode 0600) and PREFIX.pub instead of printing",
    )

    p = sub.add_parser(
        "migrate",
        help="print the gripcast.toml equivalent to a Pushpin config",
        description="Read Pushpin's pushpin.conf (with its include= file) and print the "
        "equivalent gripcast.toml on standard output; what gripcast ignores is listed in "
        "comments, what it cannot honour is refused (file, line, key).",
        epilog="Guide: docs/migrating-from-pushpin.md",
    )
    p.add_argument("pushpin_conf", metavar="PUSHPIN_CONF", help="path of pushpin.conf")
    p.add_argument(
        "--libdir",
        metavar="DIR",
        help="Pushpin's library directory for {libdir} (default /usr/lib/pushpin)",
    )

    p = sub.add_parser(
        "demo-origin",
        help="run the demo origin app alone",
        description="The built-in demo origin: an ordinary HTTP app that answers "
        "with GRIP instructions (what `gripcast run --demo` starts).",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8090",
        metavar="[ADDR:]PORT",
        help="where the demo app listens (default 127.0.0.1:8090)",
    )
    p.add_argument(
        "--publish-url",
        default="http://127.0.0.1:5561",
        metavar="URL",
        help="the broker's publish API, for the page's send box and the chat",
    )
    p.add_argument(
        "--publish-command",
        default=".venv/bin/gripcast publish test hello",
        metavar="TEXT",
        help="the publish command the demo page shows",
    )
    return parser


def _add_channel_commands(sub: Any) -> None:
    """``channels`` and ``history`` (gripcast.channels; docs/channel-api.md)."""
    from gripcast.channels import add_parsers

    add_parsers(sub)


def _add_presence(sub: Any) -> None:
    """``gripcast presence CHANNEL`` (gripcast.presence), with publish's target and auth."""
    p = sub.add_parser(
        "presence",
        help="who is subscribed to a channel with presence on",
        description="List the users present on CHANNEL (a channel in a namespace with "
        "presence = true), with their connection counts, from the broker's "
        "GET /channels/<channel>/presence (docs/channel-api.md).",
    )
    from gripcast.publish import add_target_options

    p.add_argument("channel", metavar="CHANNEL", help="channel to ask about")
    add_target_options(p)
    p.add_argument("--json", action="store_true", help="print the broker's JSON answer")


def _split_addr(value: str, default_addr: str) -> tuple[str, int]:
    addr, _, port = value.rpartition(":")
    try:
        return (addr or default_addr).strip("[]"), int(port)
    except ValueError:
        raise ConfigError([f"--port: {value!r} is not [addr:]port"]) from None


def _pushpin_values(
    args: argparse.Namespace, notes: list[tuple[int, str]] | None
) -> tuple[dict[str, Any], str]:
    """The settings of ``--pushpin-config`` (what to log about it appended to ``notes`` as
    ``(level, text)``: a warning per key gripcast ignores, one info line for the wiring)."""
    path = getattr(args, "pushpin_config", None)
    if not path:
        return {}, ""
    if args.config:
        raise ConfigError(["give --config or --pushpin-config, not both"])
    from gripcast.migrate import ensure_rundir, read_pushpin_config
    from gripcast.pushpinconf import internal_note

    t = read_pushpin_config(path)
    if notes is not None:
        notes.extend((logging.WARNING, str(w)) for w in t.warnings)
        note = internal_note(t)
        if note:
            notes.append((logging.INFO, note))
    if args.command in ("run", "broker"):
        ensure_rundir(t)
    return t.settings, t.conf.path


def config_from_args(
    args: argparse.Namespace, notes: list[tuple[int, str]] | None = None
) -> Config:
    if getattr(args, "config_file", None):
        try:
            with open(args.config_file, encoding="utf-8") as fh:
                return config_from_dict(json.load(fh))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                [f"cannot read the resolved config {args.config_file}: {exc}"]
            ) from exc
    overrides: dict[str, Any] = {}
    if args.port:
        addr, port = _split_addr(args.port, "0.0.0.0")
        overrides["client_addr"], overrides["client_port"] = addr, port
    if args.https_port is not None:
        overrides["https_port"] = tuple(args.https_port)
    if args.tls_cert is not None:
        overrides["tls_cert"] = args.tls_cert
    if args.tls_key is not None:
        overrides["tls_key"] = args.tls_key
    if args.route is not None:
        overrides["routes"] = tuple(args.route)
        overrides["routes_file"] = ""
    if args.routes_file:
        overrides["routes_file"] = args.routes_file
    for name in ("port_offset", "broker_host", "log_level", "edges", "store"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    file_values, label = _pushpin_values(args, notes)
    return load_config(args.config, overrides=overrides, file_values=file_values, file_label=label)


def _setup_logging(level: str, role: str) -> None:
    configure_logging(level, role)
    if role != "demo":
        log.info("%s pid=%d speedups=%s", role, os.getpid(), twins_description())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "publish":
        from gripcast.publish import publish_from_args

        return publish_from_args(args, sys.stdin)
    if args.command in ("channels", "history"):
        from gripcast.channels import channels_from_args

        return channels_from_args(args)
    if args.command == "presence":
        from gripcast.presence import presence_from_args

        return presence_from_args(args)
    if args.command == "keygen":
        from broker.curve import keygen_text, write_keypair

        if args.out:
            from broker.curve import CurveKeyError

            try:
                paths = write_keypair(args.out)
            except CurveKeyError as exc:
                print(f"gripcast keygen: {exc}", file=sys.stderr)
                return 1
            for path in paths:
                print(path)
        else:
            sys.stdout.write(keygen_text())
        return 0
    if args.command == "migrate":
        from gripcast.migrate import read_pushpin_config, render_toml

        try:
            text = render_toml(read_pushpin_config(args.pushpin_conf, args.libdir))
        except ConfigError as exc:
            print(f"gripcast migrate: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        sys.stdout.write(text)
        return 0
    if args.command == "demo-origin":
        _setup_logging("info", "demo")
        from gripcast.demo import serve_demo

        addr, port = _split_addr(args.listen, "127.0.0.1")
        return serve_demo(addr, port, args.publish_url, publish_command=args.publish_command)
    notes: list[tuple[int, str]] = []
    try:
        cfg = config_from_args(args, notes)
    except ConfigError as exc:
        print(f"gripcast: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    role = f"edge{args.index}" if args.command == "edge" else args.command
    _setup_logging(cfg.log_level, "runner" if role == "run" else role)
    for level, note in notes:
        log.log(level, "pushpin config: %s", note)
    if args.command == "broker":
        from broker.config import several_brokers_problems
        from broker.server import main as broker_main

        if problems := several_brokers_problems(cfg):
            log.error("not started: %s", "; ".join(problems))
            return EXIT_CONFIG
        return broker_main(cfg, reload_config=lambda: config_from_args(args))
    if args.command == "edge":
        from edge.server import main as edge_main

        return edge_main(cfg, args.index, reload_config=lambda: config_from_args(args))
    from gripcast.runner import run_cluster

    try:
        return run_cluster(cfg, demo=args.demo, demo_port=args.demo_port, brokers=args.brokers)
    except ConfigError as exc:
        log.error("not started: %s", exc)
        return EXIT_CONFIG
