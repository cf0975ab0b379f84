"""GRIP subscription filters (sans-IO), with Pushpin 1.36's semantics (``handler/filter.cpp``,
``handler/format.cpp``, ``handler/idformat.cpp``; reference 2.8).

A subscription (a session on a channel) may name up to 5 filters (``Grip-Channel: c;
filter=skip-self``, JSON ``filters``, WebSocket ``subscribe`` ``filters``).  Its *meta* comes
from ``Grip-Set-Meta`` (or JSON ``meta``, WebSocket ``set-meta``); a published item carries
``meta`` too.

Delivery filters (``allowed``) decide whether a message goes to a subscriber at all:

* ``skip-self``: drop when the sub meta ``user`` equals the publish meta ``sender`` (both
  non-empty);
* ``skip-users``: drop when the sub meta ``user`` is in the publish meta ``skip_users``
  (comma list, trimmed);
* ``require-sub``: drop unless the session is also subscribed to the publish meta
  ``require_sub`` channel (``channels``: the session's channel names).

Content filters (``render``) rewrite the message content, in the order the subscription
names them; both use Pushpin's format language (``%%`` is a literal ``%``, ``%X`` a directive,
``%(arg)X`` a directive with an argument in which ``\\`` escapes the next byte):

* ``var-subst``: ``%(name)s`` is the sub meta value ``name``;
* ``build-id``: ``%I`` is the subscription's current id, rendered from the sub meta
  ``id_format`` (itself a format whose ``%(channel)s`` is the last id seen on that channel:
  the channel's ``prev-id``, then the id of each item published to it since; a channel held
  without ``prev-id`` has no value), ``%(text)I`` is ``text``; sub meta ``id_encoding=hex``
  hex-encodes either.  django-eventstream relies on it: ``Grip-Set-Meta: id_format=
  test:%(events-test)s`` and events published as ``id: %I`` with every ``%`` of the data
  doubled.  The id of an item is its publisher ``id`` (gripcast's cursor, ``epoch:seq``, when
  the publisher gave none, where Pushpin would have no value).  ``build-id`` also rewrites
  the initial response body of a stream (and of a no-hold instruct, and a next link's body:
  *proxy content*), where no channel has a value: ``%I`` is an error there, ``%%`` is ``%``.

An unknown directive, variable, or format error raises ``FilterError`` with Pushpin's text
(``"build-id: ..."``); Pushpin then ends a stream and answers a long-poll 502 (WebSocket:
the message is dropped).  A published format's ``content-filters`` must equal the
subscription's content filters on that channel (``content_match``) or the same happens.
Unknown filter names are ignored, as Pushpin ignores them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType

from broker.errors import RemoteProtocolError

KNOWN = ("skip-self", "skip-users", "require-sub", "build-id", "var-subst")
DELIVERY = frozenset(["skip-self", "skip-users", "require-sub"])
MESSAGE_CONTENT = frozenset(["build-id", "var-subst"])  # Pushpin's MessageContent target
PROXY_CONTENT = frozenset(["build-id"])  # Pushpin's ProxyContent target (initial bodies)
NO_IDS: Mapping[str, str | None] = MappingProxyType({})

_PCT, _LPAREN, _RPAREN, _BSLASH = 0x25, 0x28, 0x29, 0x5C

# handle(directive, argument or None) -> the bytes it stands for; raises FilterError
Handler = Callable[[str, bytes | None], bytes]


class FilterError(RemoteProtocolError):
    """A content filter failed: Pushpin ends the stream (or answers the long-poll 502)."""


class _Partial(FilterError):
    """An incomplete directive at the end of the input (incremental rendering only)."""


def _isalpha(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def process(data: bytes, handle: Handler, partial: bool = False) -> tuple[bytes, int]:
    """Pushpin's ``Format::process``: ``(output, bytes consumed)``.

    With ``partial`` an incomplete directive at the end is left unconsumed (the caller keeps
    it for the next piece); without, it is an error.  Errors name the position, as Pushpin's.
    """
    if b"%" not in data:
        return data, len(data)
    out = bytearray()
    i, n = 0, len(data)
    try:
        while True:
            j = data.find(b"%", i)
            if j == -1:
                out += data[i:]
                return bytes(out), n
            out += data[i:j]
            marker = j
            if j + 1 >= n:
                raise _Partial(f"Expected directive after '%' at position {j}")
            k = j + 1
            c = data[k]
            if c == _LPAREN:
                field_start = k
                if k + 1 >= n:
                    raise _Partial(f"Expected character after '(' at position {k}")
                k += 1
                arg = bytearray()
                closed = False
                while k < n:
                    c = data[k]
                    if c == _BSLASH:
                        if k + 1 >= n:
                            raise _Partial(f"Expected character after '\\' at position {k}")
                        k += 1
                        arg.append(data[k])
                    elif c == _RPAREN:
                        closed = True
                        break
                    else:
                        arg.append(c)
                    k += 1
                if not closed:
                    raise _Partial(f"Unterminated field starting at position {field_start}")
                if k + 1 >= n:
                    raise _Partial(f"Expected directive after ')' at position {k}")
                k += 1
                # an empty argument is no argument (Pushpin's null QByteArray)
                out += _handle(handle, data[k], bytes(arg) if arg else None, k)
            elif c == _PCT:
                out.append(_PCT)
            elif _isalpha(c):
                out += _handle(handle, c, None, k)
            else:
                raise FilterError(f"Unknown directive '{chr(c)}' at position {k}")
            i = k + 1
    except _Partial as exc:
        if partial:
            return bytes(out), marker
        raise FilterError(str(exc)) from None


def _handle(handle: Handler, c: int, arg: bytes | None, pos: int) -> bytes:
    try:
        return handle(chr(c), arg)
    except FilterError as exc:
        raise FilterError(f"{exc} at position {pos}") from None


def _var_handler(vars_: Mapping[str, object]) -> Handler:
    def handle(d: str, arg: bytes | None) -> bytes:
        if d != "s":
            raise FilterError(f"Unknown directive '{d}'")
        if arg is None:
            raise FilterError("Directive 's' requires argument")
        name = arg.decode("utf-8", "replace")
        value = vars_.get(name)
        if value is None:
            raise FilterError(f"No such variable '{name}'")
        return str(value).encode("utf-8")

    return handle


def var_subst(content: bytes, meta: Mapping[str, object]) -> bytes:
    """``var-subst``: ``%(name)s`` -> ``meta[name]`` (UTF-8); ``%%`` -> ``%``."""
    try:
        return process(content, _var_handler(meta))[0]
    except FilterError as exc:
        raise FilterError(f"var-subst: {exc}") from None


def render_id(id_format: str, ids: Mapping[str, str | None]) -> bytes:
    """Pushpin's ``IdFormat::renderId``: ``%(channel)s`` in ``id_format`` -> that channel's id."""
    return process(id_format.encode("utf-8"), _var_handler(ids))[0]


class IdRenderer:
    """``build-id`` over content that may arrive in pieces (Pushpin's ``ContentRenderer``):
    ``update(piece)`` returns what is complete, ``finalize()`` the rest (or raises)."""

    __slots__ = ("_id", "_hex", "_buf", "_handle")

    def __init__(self, sub_meta: Mapping[str, str], ids: Mapping[str, str | None]) -> None:
        fmt = sub_meta.get("id_format")
        if fmt is None:
            raise FilterError("build-id: no sub meta 'id_format'")
        default: bytes | None = None
        if ids:
            try:
                default = render_id(fmt, ids)
            except FilterError as exc:
                raise FilterError(f"build-id: failed to render ID: {exc}") from None
        enc = sub_meta.get("id_encoding")
        if enc is not None and enc != "hex":
            raise FilterError(f"build-id: unsupported encoding: {enc}")
        self._id = default
        self._hex = enc is not None
        self._buf = b""

        def handle(d: str, arg: bytes | None) -> bytes:
            if d != "I":
                raise FilterError(f"Unknown directive '{d}'")
            value = arg if arg is not None else self._id
            if value is None:
                raise FilterError("No ID specified and no default ID in context")
            return value.hex().encode("ascii") if self._hex else value

        self._handle = handle

    def update(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        try:
            out, used = process(buf, self._handle, partial=True)
        except FilterError as exc:
            raise FilterError(f"build-id: {exc}") from None
        self._buf = buf[used:]
        return out

    def finalize(self) -> bytes:
        buf, self._buf = self._buf, b""
        return self.process(buf)

    def process(self, data: bytes) -> bytes:
        try:
            return process(data, self._handle)[0]
        except FilterError as exc:
            raise FilterError(f"build-id: {exc}") from None


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


def render(
    filters: Iterable[str],
    sub_meta: Mapping[str, str],
    content: bytes,
    ids: Mapping[str, str | None] = NO_IDS,
) -> bytes:
    """Run the content filters of ``filters`` over one message's ``content``, in order.

    ``ids``: channel -> last id for ``build-id`` (``prev_ids``); empty on WebSocket sessions,
    as in Pushpin 1.36 (so ``%I`` is an error there).  Raises FilterError.
    """
    for f in filters:
        if f == "var-subst":
            content = var_subst(content, sub_meta)
        elif f == "build-id":
            content = IdRenderer(sub_meta, ids).process(content)
    return content


def apply(
    filters: Iterable[str],
    sub_meta: Mapping[str, str],
    pub_meta: Mapping[str, object],
    channels: Collection[str],
    content: bytes,
    ids: Mapping[str, str | None] = NO_IDS,
) -> bytes | None:
    """``allowed`` then ``render``: the content to send, or None to drop.

    Raises FilterError when a content filter fails.
    """
    filters = tuple(filters)
    if not allowed(filters, sub_meta, pub_meta, channels):
        return None
    return render(filters, sub_meta, content, ids)


def changes_content(filters: Collection[str]) -> bool:
    return not MESSAGE_CONTENT.isdisjoint(filters)


def content_filters(filters: Iterable[str]) -> list[str]:
    """The subscription's filters that rewrite message content, in order."""
    return [f for f in filters if f in MESSAGE_CONTENT]


def content_match(filters: Iterable[str] | None, published: object) -> bool:
    """A format's ``content-filters`` (``published``, None when absent) against the
    subscription's ``filters``: equal lists, as Pushpin requires."""
    if published is None:
        return True
    if not isinstance(published, list | tuple):
        return False
    return content_filters(filters or ()) == list(published)


def mismatch_reason(filters: Iterable[str] | None, published: Iterable[str]) -> str:
    return "content filter mismatch: subscription={} message={}".format(
        ",".join(content_filters(filters or ())), ",".join(published)
    )


def prev_ids(
    channels: Iterable[tuple[str, str | None]],
    seen: Mapping[str, str],
    channel: str | None = None,
    item_id: str | None = None,
) -> dict[str, str | None]:
    """Pushpin's per-session ``prevIds`` as a publish to ``channel`` sees them.

    ``channels``: the hold's ``(name, prev_id)``; a channel held without ``prev-id`` has
    no value (None).  ``seen``: channel -> id of the last item delivered on it.  The item
    being delivered (``channel``, ``item_id``) counts as seen: Pushpin advances the id first.
    """
    out: dict[str, str | None] = {}
    for name, prev in channels:
        if prev is None:
            out[name] = None
        elif name == channel and item_id is not None:
            out[name] = item_id
        else:
            out[name] = seen.get(name, prev)
    return out


def proxy_filters(channel_filters: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """The distinct proxy-content filters over all channels (Pushpin's order)."""
    out: list[str] = []
    for fs in channel_filters:
        for f in fs:
            if f in PROXY_CONTENT and f not in out:
                out.append(f)
    return tuple(out)


def proxy_renderer(
    channel_filters: Iterable[Iterable[str]], sub_meta: Mapping[str, str]
) -> IdRenderer | None:
    """The renderer for a response body when some channel has ``build-id`` (else None).

    Raises FilterError (no ``id_format``, a bad ``id_encoding``)."""
    if not proxy_filters(channel_filters):
        return None
    return IdRenderer(sub_meta, NO_IDS)
