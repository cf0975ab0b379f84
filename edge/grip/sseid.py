"""Message ids in published content: ``%(id)s`` becomes the message's cursor at the edge.

A client resumes from the id it last saw (SSE ``Last-Event-ID``, passed by the origin as
``Grip-Channel: <channel>; prev-id=<id>``).  A publisher that gives each item an ``id`` writes
it into the SSE event itself (``id: <id>``), as with Pushpin.  A publisher that gives no id
does not know the id the broker assigns (``<epoch>:<seq>``, known only once the message is
sequenced), so it writes the placeholder instead::

    id: %(id)s
    data: hello

and every edge replaces ``%(id)s`` in ``http-stream`` content with ``Envelope.cursor`` (the
publisher's id if it gave one, else ``epoch:seq``), live and in replays alike.  The check is
one substring test per message (not per connection); content without the placeholder is
untouched.  ``%(id)s`` is therefore reserved in published content.  Only subscribers without
content filters get it: for one whose channel has ``build-id`` or ``var-subst`` the content
as published goes through Pushpin's format language (``edge.grip.filters``), as in Pushpin.
"""

from __future__ import annotations

ID_TOKEN = b"%(id)s"


def render_ids(content: bytes, cursor: str) -> bytes:
    """``content`` with every ``%(id)s`` replaced by ``cursor`` (utf-8)."""
    if ID_TOKEN not in content:
        return content
    return content.replace(ID_TOKEN, cursor.encode("utf-8"))
