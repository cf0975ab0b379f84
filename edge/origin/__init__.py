"""Talking to the origin: ``client`` (``OriginClient``, the edge's one object for origin
requests, owning the keep-alive pool, the read timer and the header-name memo; HTTP/1.1
requests to a route's targets, response heads, the connect-with-fail-over loop shared with
``edge.ws.proxy``), ``pool`` (keep-alive connections reused across requests), ``sig`` (the
``Grip-Sig`` JWT)."""
