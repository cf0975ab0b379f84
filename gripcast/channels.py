"""``gripcast channels [PREFIX]`` and ``gripcast history CHANNEL``: the broker's channel API
(docs/channel-api.md) from the command line, with ``gripcast publish``'s URL and auth options
(``--url``/``GRIP_URL``, ``--key``, ``--iss``).  Tables by default (rich), ``--json`` for the
broker's answer as is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from rich.console import Console
from rich.table import Table

from gripcast.publish import GripUrl, add_target_options, auth_header, target_from_args

PREVIEW_CHARS = 60
_FORMAT_TEXT = (("http-stream", "content"), ("ws-message", "content"), ("http-response", "body"))


def add_auth_options(p: argparse.ArgumentParser) -> None:
    """``gripcast publish``'s --url, --port-offset, --key, --iss, and --json."""
    add_target_options(p)
    p.add_argument("--json", action="store_true", help="print the broker's JSON answer as is")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "channels",
        help="list live channels with their subscriber counts",
        description="List the channels some edge is subscribed to (the broker's "
        "GET /channels), with subscribers by mode, a page at a time.",
    )
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="channel name prefix")
    p.add_argument("--after", metavar="CHANNEL", help="start after this channel name (paging)")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (1-1000)")
    add_auth_options(p)
    p = sub.add_parser(
        "history",
        help="show a channel's retained messages",
        description="Show the messages the broker retains for CHANNEL (GET "
        "/channels/CHANNEL/items), after a cursor (a publisher id or epoch:seq).",
    )
    p.add_argument("channel", metavar="CHANNEL", help="the channel whose history to show")
    p.add_argument("--after", metavar="ID", help="only messages after this id")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (1-1000)")
    add_auth_options(p)


def fetch_json(target: GripUrl, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """GET ``path`` on the publish API; (status, body text)."""
    base, _, query = target.control_uri.partition("?")
    url = base.rstrip("/") + path
    if query:
        url += ("&" if "?" in path else "?") + query
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    authorization = auth_header(target.iss, target.key, time.time())
    if authorization:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def channels_path(prefix: str, after: str | None, limit: int) -> str:
    q: dict[str, str] = {"limit": str(limit)}
    if prefix:
        q["prefix"] = prefix
    if after:
        q["after"] = after
    return "/channels?" + urlencode(q)


def history_path(channel: str, after: str | None, limit: int) -> str:
    q: dict[str, str] = {"limit": str(limit)}
    if after:
        q["after"] = after
    return f"/channels/{quote(channel, safe='')}/items?" + urlencode(q)


def preview(item: dict[str, Any]) -> str:
    """A one-line preview of an item's text (the first format with text)."""
    formats = item.get("formats") or {}
    for name, key in _FORMAT_TEXT:
        f = formats.get(name) or {}
        if key in f:
            text = str(f[key]).replace("\n", "\\n")
            return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
        if key + "-bin" in f:
            return "(binary)"
        if "action" in f and f["action"] != "send":
            return f"({f['action']})"
    return ""


def _age(doc: dict[str, Any]) -> str:
    age = doc.get("counts_age_s")
    edges = doc.get("edges", 0)
    if age is None:
        return "no edge reporting"
    return f"{edges} edge(s) reporting, figures {age:.1f} s old"


def render_channels(doc: dict[str, Any], console: Console) -> None:
    table = Table(title="live channels")
    for col in ("channel", "subscribers", "stream", "response", "ws"):
        table.add_column(col, justify="left" if col == "channel" else "right")
    for row in doc.get("channels", []):
        m = row.get("by_mode", {})
        table.add_row(
            row["channel"],
            str(row.get("subscribers", 0)),
            str(m.get("stream", 0)),
            str(m.get("response", 0)),
            str(m.get("ws", 0)),
        )
    console.print(table)
    console.print(_age(doc))
    if doc.get("more"):
        console.print(f"more: --after {doc.get('next')}")


def render_history(doc: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"{doc.get('channel')} (epoch {doc.get('epoch')}, last seq {doc.get('last_seq')})"
    )
    for col in ("id", "publisher id", "time", "text"):
        table.add_column(col)
    for item in doc.get("items", []):
        ts = datetime.fromtimestamp(item.get("ts", 0), tz=UTC)
        table.add_row(
            item["id"],
            item.get("publisher_id", ""),
            ts.strftime("%H:%M:%S.%f")[:-3],
            preview(item),
        )
    console.print(table)
    if doc.get("truncated"):
        console.print(
            "[yellow]truncated:[/] the cursor is older than the history (or unknown); these are "
            "the oldest messages kept"
        )
    if doc.get("more"):
        console.print(f"more: --after {doc.get('next')}")


def channels_from_args(args: argparse.Namespace, console: Console | None = None) -> int:
    name = f"gripcast {args.command}"
    try:
        target = target_from_args(args, dict(os.environ))
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    if args.command == "channels":
        path = channels_path(args.prefix, args.after, args.limit)
    else:
        path = history_path(args.channel, args.after, args.limit)
    try:
        status, body = fetch_json(target, path)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"{name}: cannot reach {target.control_uri}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{name}: {status} {body.strip()}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(body if body.endswith("\n") else body + "\n")
        return 0
    doc = json.loads(body)
    console = console or Console()
    if args.command == "channels":
        render_channels(doc, console)
    else:
        render_history(doc, console)
    return 0
