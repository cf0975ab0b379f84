"""``gripcast publish``: one item to the broker's HTTP publish API (like ``pushpin-publish``).

Authentication as gripcontrol does it: a Fanout-style ``GRIP_URL``
(``http://host:5561/?iss=ISS&key=KEY``, ``key=base64:...`` for a binary key) or ``--key`` and
``--iss``; with an issuer the request carries ``Authorization: Bearer <JWT>`` (HS256, claims
``iss`` and ``exp`` one hour ahead), with a key alone ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

TOKEN_TTL_S = 3600  # gripcontrol's (pubcontrol's) exp: one hour


@dataclass(frozen=True, slots=True)
class GripUrl:
    """A publish endpoint with its credentials (gripcontrol's ``parse_grip_uri``)."""

    control_uri: str
    iss: str | None = None
    key: bytes | None = None


def decode_key(text: str) -> bytes:
    """A key as gripcontrol reads it: ``base64:<b64>`` decoded, anything else as UTF-8."""
    if text.startswith("base64:"):
        try:
            return base64.b64decode(text[7:], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"bad base64 key ({exc})") from None
    return text.encode("utf-8")


def parse_grip_url(url: str) -> GripUrl:
    """Split ``iss`` and ``key`` off the query (a ``+`` in them stays a ``+``, as
    gripcontrol's workaround for base64 keys); a trailing ``/`` of the path is dropped."""
    parts = urlsplit(url)
    params = parse_qs(parts.query.replace("+", "%2B"), keep_blank_values=False)
    iss = params.pop("iss", [None])[0]
    key_text = params.pop("key", [None])[0]
    qs = urlencode(params, doseq=True)
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    control = f"{parts.scheme}://{parts.netloc}{path}" + (f"?{qs}" if qs else "")
    return GripUrl(control, iss or None, decode_key(key_text) if key_text else None)


def auth_header(iss: str | None, key: bytes | None, now: float) -> str | None:
    """The ``Authorization`` value gripcontrol sends for these credentials (None: none)."""
    if key is None:
        return None
    if iss is None:
        return "Bearer " + key.decode("utf-8", "replace")
    with warnings.catch_warnings():  # a short key is the user's choice (as with gripcontrol)
        warnings.simplefilter("ignore", UserWarning)  # PyJWT's InsecureKeyLengthWarning
        token = jwt.encode({"iss": iss, "exp": int(now) + TOKEN_TTL_S}, key, algorithm="HS256")
    return "Bearer " + token


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
    base_url: str,
    items: list[dict[str, Any]],
    timeout: float = 10.0,
    authorization: str | None = None,
) -> tuple[int, str]:
    """POST ``{"items": items}`` to ``<base_url>/publish/``; returns (status, body text)."""
    data = json.dumps({"items": items}).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "text/plain"}
    if authorization:
        headers["Authorization"] = authorization
    base, _, query = base_url.partition("?")
    req = urllib.request.Request(
        base.rstrip("/") + "/publish/" + (f"?{query}" if query else ""),
        data=data,
        method="POST",
        headers=headers,
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


def add_target_options(p: argparse.ArgumentParser) -> None:
    """The publish API target and auth options (``--url``, ``--port-offset``, ``--key``,
    ``--iss``) that ``target_from_args`` reads: ``gripcast publish``, ``channels``, ``history``
    and ``presence`` share them."""
    p.add_argument(
        "--url",
        default=None,
        metavar="URL",
        help="publish API base URL, Fanout style with credentials allowed "
        "(http://host:5561/?iss=ISS&key=KEY) (default $GRIP_URL or http://127.0.0.1:5561)",
    )
    p.add_argument(
        "--port-offset",
        type=int,
        default=0,
        metavar="N",
        help="port offset of the cluster, for the default URL (default 0)",
    )
    p.add_argument(
        "--key",
        metavar="KEY",
        help="sign with this key (the broker's publish_jwt_key; base64:<b64> for a binary "
        "key), as gripcontrol does; default: the key= of GRIP_URL",
    )
    p.add_argument(
        "--iss",
        metavar="ISS",
        help="JWT issuer (with --key: an HS256 token; without an issuer the key is sent as "
        "a bearer token, as gripcontrol does); default: the iss= of GRIP_URL",
    )


def target_from_args(args: argparse.Namespace, environ: dict[str, str]) -> GripUrl:
    """Where to publish and with what credentials: ``--url``, else ``GRIP_URL``, else the
    local broker; ``--iss``/``--key`` override the URL's.  ValueError for a bad key."""
    url = args.url or environ.get("GRIP_URL") or f"http://127.0.0.1:{5561 + args.port_offset}"
    target = parse_grip_url(url)
    iss = args.iss if args.iss is not None else target.iss
    key = decode_key(args.key) if args.key is not None else target.key
    return GripUrl(target.control_uri, iss or None, key or None)


def publish_from_args(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    try:
        target = target_from_args(args, dict(os.environ))
        text = message_text(args.text, stdin, args.close)
    except ValueError as exc:
        print(f"gripcast publish: {exc}", file=sys.stderr)
        return 2
    base = target.control_uri
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
        status, body = post_items(
            base, [item], authorization=auth_header(target.iss, target.key, time.time())
        )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"gripcast publish: cannot reach {base}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"gripcast publish: {status} {body.strip()}", file=sys.stderr)
        return 1
    print(body.strip())
    return 0
