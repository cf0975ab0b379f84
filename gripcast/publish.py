"""``gripcast publish``: one item to the broker's HTTP publish API (like ``pushpin-publish``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO


def build_item(
    channel: str,
    text: str,
    *,
    item_id: str | None = None,
    prev_id: str | None = None,
    eol: bool = True,
    sse: bool = False,
    close: bool = False,
) -> dict[str, Any]:
    """The publish item for ``text`` in all three formats (HTTP stream, long-poll, WebSocket)."""
    if sse:
        body = "".join(f"data: {line}\n" for line in text.split("\n")) + "\n"
        if item_id:
            body = f"id: {item_id}\n" + body
    else:
        body = text + ("\n" if eol else "")
    stream_body = body
    if sse and not item_id:
        stream_body = "id: %(id)s\n" + body  # the edge writes the broker's epoch:seq id here
    formats: dict[str, dict[str, str]] = {
        "http-stream": {"action": "close"} if close else {"content": stream_body},
        "ws-message": {"action": "close"} if close else {"content": text},
    }
    if not close:
        formats["http-response"] = {"body": body}
    item: dict[str, Any] = {"channel": channel, "formats": formats}
    if item_id:
        item["id"] = item_id
    if prev_id:
        item["prev-id"] = prev_id
    return item


def post_items(
    base_url: str, items: list[dict[str, Any]], timeout: float = 10.0
) -> tuple[int, str]:
    """POST ``{"items": items}`` to ``<base_url>/publish/``; returns (status, body text)."""
    data = json.dumps({"items": items}).encode("utf-8")
    req = urllib.request.Request(
        base_url.rstrip("/") + "/publish/",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "text/plain"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def message_text(text: str | None, stdin: TextIO | None, close: bool) -> str:
    """The message: TEXT, else standard input when it is not a terminal; raises ValueError
    when there is none (publishing an empty message by mistake helps nobody)."""
    if close:
        return text or ""
    if text is not None:
        if text == "":
            raise ValueError("the message is empty (give TEXT, or pipe it on standard input)")
        return text
    if stdin is None or stdin.isatty():
        raise ValueError(
            "no message: give TEXT, or pipe it on standard input "
            "(echo hello | gripcast publish CHANNEL)"
        )
    data = stdin.read()
    if data.endswith("\n"):
        data = data[:-1]  # the newline is added back unless --no-eol
    if not data:
        raise ValueError("standard input was empty: nothing to publish")
    return data


def publish_from_args(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    base = args.url or os.environ.get("GRIP_URL") or f"http://127.0.0.1:{5561 + args.port_offset}"
    try:
        text = message_text(args.text, stdin, args.close)
    except ValueError as exc:
        print(f"gripcast publish: {exc}", file=sys.stderr)
        return 2
    item = build_item(
        args.channel,
        text,
        item_id=args.item_id,
        prev_id=args.prev_id,
        eol=not args.no_eol,
        sse=args.sse,
        close=args.close,
    )
    try:
        status, body = post_items(base, [item])
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"gripcast publish: cannot reach {base}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"gripcast publish: {status} {body.strip()}", file=sys.stderr)
        return 1
    print(body.strip())
    return 0
