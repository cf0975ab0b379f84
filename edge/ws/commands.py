"""What an edge answers to the commands the broker relays (Pushpin's ``conncheck`` and
``refresh``, reference 6.2; the contract is in ``broker.wire``).

* ``conncheck``: the ids that are open client connections on this edge (the ids of the stats
  socket, ``edge.ops.connstats``: ``<edge>:<n>`` for HTTP, the ``Connection-Id`` uuid for a
  WebSocket);
* ``refresh`` of ``cid``: the WebSocket session with that connection id asks its
  WebSocket-over-HTTP origin now (``edge.ws.over_http``; a proxied WebSocket: nothing to do);
  found when this edge has it;
* ``refresh`` of ``channel``: the same for every WebSocket session subscribed to the channel.

Each returns the ids found here; the edge sends them to the broker, which answers the requester
once every edge has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from broker.wire import ConnCheckCommand, EdgeCommand
from edge.ws.session import WsSession

if TYPE_CHECKING:
    from edge.ops.connstats import ConnStats
    from edge.sessionstate import Session
    from edge.sync.hub import Hub


def answer(
    command: EdgeCommand,
    stats: ConnStats,
    websockets: Mapping[str, WsSession],
    hub: Hub[Session],
) -> tuple[str, ...]:
    """Do ``command`` on this edge; the ids found here."""
    if isinstance(command, ConnCheckCommand):
        return stats.open_ids(command.ids)
    if command.cid is not None:
        session = websockets.get(command.cid)
        if session is None:
            return ()
        session.refresh()
        return (command.cid,)
    found = []
    for s in list(hub.sessions(command.channel or "")):
        if isinstance(s, WsSession) and websockets.get(s.cid) is s:
            s.refresh()
            found.append(s.cid)
    return tuple(found)
