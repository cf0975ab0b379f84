"""``gripcast presence CHANNEL``: who is subscribed to a channel with presence on
(``GET /channels/<channel>/presence`` on the broker's publish API; docs/channel-api.md).

The target and credentials are the publish command's (``--url``/``GRIP_URL``, ``--key``,
``--iss``; ``gripcast.publish``).  Prints one ``user connections`` line per user, or the
broker's JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from gripcast.publish import auth_header, target_from_args


def get_presence(
    base_url: str, channel: str, authorization: str | None = None, timeout: float = 10.0
) -> tuple[int, str]:
    """GET ``<base_url>/channels/<channel>/presence``; returns (status, body text)."""
    base, _, query = base_url.partition("?")
    url = base.rstrip("/") + "/channels/" + quote(channel, safe="") + "/presence"
    headers = {"Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    req = urllib.request.Request(url + (f"?{query}" if query else ""), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def render(doc: dict[str, Any]) -> str:
    """The table: one ``user  connections`` line per user (a header first)."""
    users = doc.get("users") or []
    if not users:
        return f"nobody present on {doc.get('channel', '')!r}"
    width = max(len("USER"), *(len(u["user"]) for u in users))
    lines = [f"{'USER':<{width}}  CONNECTIONS"]
    lines += [f"{u['user']:<{width}}  {u['connections']}" for u in users]
    return "\n".join(lines)


def presence_from_args(args: argparse.Namespace) -> int:
    try:
        target = target_from_args(args, dict(os.environ))
    except ValueError as exc:
        print(f"gripcast presence: {exc}", file=sys.stderr)
        return 2
    base = target.control_uri
    try:
        status, body = get_presence(
            base, args.channel, auth_header(target.iss, target.key, time.time())
        )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"gripcast presence: cannot reach {base}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"gripcast presence: {status} {body.strip()}", file=sys.stderr)
        return 1
    if args.json:
        print(body.strip())
        return 0
    try:
        doc = json.loads(body)
    except ValueError:
        print(f"gripcast presence: not JSON: {body.strip()!r}", file=sys.stderr)
        return 1
    print(render(doc))
    return 0
