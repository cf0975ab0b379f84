"""The gripcast edge: stateless trio processes that hold client connections.

Top level: ``server`` (composition root: ``main(cfg, index)``), ``routes`` (Pushpin routes file,
sans-IO), ``timers`` (coarse timer buckets), ``readtimer`` (coarse socket-wait timeouts),
``fastpath`` (non-blocking ``send``/``recv`` on trio sockets, the one place trio internals are used),
``services`` (what each part needs from the edge process, as typed ``Protocol``s: no untyped
``app``), ``sessionstate`` (the one session state machine shared by response holds, stream holds
and WebSockets).

Folders, one concern each:

* ``http1/``  client connections: the HTTP/1.1 server (``connection``), response bytes, header rules.
* ``origin/`` talking to the origin: the HTTP client with route fail-over, its keep-alive pool, Grip-Sig.
* ``grip/``   GRIP instructs -> ``Hold``, their cache, held sessions and what happens to them
  (``holds``: a publish for a held long-poll is answered through ``session``), filters, JSON patch.
* ``ws/``     WebSocket: the client session, frames, GRIP control, WebSocket-over-HTTP and the
  WebSocket-to-WebSocket proxy toward the origin, keep-alive timers.
* ``sync/``   the broker: the ZeroMQ link, per-channel trackers, the channel hub, history resume and
  repair, and the delivery hot path.
* ``ops/``    operations: drain and reload, metrics, stats reports.

A request, top to bottom: ``http1`` parses it, ``routes`` picks the route, ``origin`` asks the
origin, ``grip`` decides from the answer (relay, answer, or hold a session), and ``sync`` delivers
what is published.  A publish for a held long-poll: ``sync/link`` receives it, ``sync/tracker``
orders it, ``sync/hub`` finds the channel's sessions, and ``sync/deliver`` answers each
``grip/session.ResponseSession`` with the item's ``http-response`` (patched by ``grip/jsonpatch``).
"""
