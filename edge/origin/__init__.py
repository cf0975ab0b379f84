"""Talking to the origin: ``client`` (HTTP/1.1 requests to a route's targets, response heads,
the connect-with-fail-over loop shared with ``edge.ws.proxy``), ``pool`` (keep-alive
connections reused across requests), ``sig`` (the ``Grip-Sig`` JWT)."""
