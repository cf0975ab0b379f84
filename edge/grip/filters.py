"""GRIP subscription filters (sans-IO), as Pushpin's ``handler/filter.cpp``.

A subscription (a session on a channel) may name up to 5 filters (``Grip-Channel: c;
filter=skip-self``, JSON ``filters``, WebSocket ``subscribe`` ``filters``).  Its *meta* comes
from ``Grip-Set-Meta`` (or JSON ``meta``, WebSocket ``set-meta``); a published item carries
``meta`` too.  For each delivery ``apply(filters, sub_meta, pub_meta, channels, content)``
returns the content to send, or None to drop the message:

* ``skip-self``: drop when the sub meta ``user`` equals the publish meta ``sender`` (both
  non-empty);
* ``skip-users``: drop when the sub meta ``user`` is in the publish meta ``skip_users``
  (comma list, trimmed);
* ``require-sub``: drop unless the session is also subscribed to the publish meta
  ``require_sub`` channel (``channels``: the session's channel names);
* ``var-subst``: ``%(name)s`` in the content is replaced by the sub meta value ``name``;
  ``%%`` is a literal ``%``; an unknown variable or directive is an error: the message is
  dropped (``FilterError`` reason logged by the caller);
* ``build-id`` (Pushpin's id templating) and unknown names are ignored, as Pushpin ignores
  unknown names.

Filters run in the order given; the first drop stops the chain.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from broker.errors import RemoteProtocolError

KNOWN = ("skip-self", "skip-users", "require-sub", "var-subst")
DELIVERY = frozenset(["skip-self", "skip-users", "require-sub"])


class FilterError(RemoteProtocolError):
    """A content filter failed (the message is dropped for that subscriber)."""


def var_subst(content: bytes, meta: Mapping[str, object]) -> bytes:
    """Replace ``%(name)s`` with ``meta[name]`` (UTF-8); ``%%`` -> ``%``."""
    if b"%" not in content:
        return content
    out = bytearray()
    i, n = 0, len(content)
    while i < n:
        c = content[i]
        if c != 0x25:  # %
            j = content.find(b"%", i)
            if j == -1:
                out += content[i:]
                break
            out += content[i:j]
            i = j
            continue
        if i + 1 >= n:
            raise FilterError("Unexpected end of format")
        nxt = content[i + 1]
        if nxt == 0x25:
            out.append(0x25)
            i += 2
            continue
        arg = None
        k = i + 1
        if nxt == 0x28:  # (
            end = content.find(b")", k)
            if end == -1:
                raise FilterError("Unterminated directive argument")
            arg = content[k + 1 : end]
            k = end + 1
        if k >= n:
            raise FilterError("Unexpected end of format")
        directive = chr(content[k])
        if directive != "s":
            raise FilterError(f"Unknown directive '{directive}'")
        if arg is None:
            raise FilterError("Directive 's' requires argument")
        name = arg.decode("utf-8", "replace")
        value = meta.get(name)
        if value is None:
            raise FilterError(f"No such variable '{name}'")
        out += str(value).encode("utf-8")
        i = k + 1
    return bytes(out)


def allowed(
    filters: Iterable[str],
    sub_meta: Mapping[str, object],
    pub_meta: Mapping[str, object],
    channels: Collection[str],
) -> bool:
    """The delivery filters' verdict (content filters aside)."""
    for f in filters:
        if f == "skip-self":
            user = sub_meta.get("user") or ""
            sender = pub_meta.get("sender") or ""
            if user and sender and user == sender:
                return False
        elif f == "skip-users":
            user = sub_meta.get("user") or ""
            skip = [s.strip() for s in str(pub_meta.get("skip_users") or "").split(",")]
            if user and user in skip:
                return False
        elif f == "require-sub":
            need = pub_meta.get("require_sub") or ""
            if need and need not in channels:
                return False
    return True


def apply(
    filters: Iterable[str],
    sub_meta: Mapping[str, object],
    pub_meta: Mapping[str, object],
    channels: Collection[str],
    content: bytes,
) -> bytes | None:
    """Run ``filters`` for one delivery: the content to send, or None to drop.

    Raises FilterError when a content filter fails (the caller drops and logs).
    """
    for f in filters:
        if f in DELIVERY:
            if not allowed((f,), sub_meta, pub_meta, channels):
                return None
        elif f == "var-subst":
            content = var_subst(content, sub_meta)
    return content


def changes_content(filters: Collection[str]) -> bool:
    return "var-subst" in filters
