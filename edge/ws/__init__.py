"""WebSocket: ``session`` (a client WebSocket held by the edge), ``connection`` (frames, sans-IO
over the ``_speedups`` twin), ``control`` (GRIP control messages), ``events`` (the
WebSocket-over-HTTP event codec), ``over_http`` (origin over WebSocket-over-HTTP), ``proxy``
(origin over WebSocket), ``timers`` (keep-alives in one shared timer task)."""
