"""Client-facing HTTP/1.1: ``connection`` (one client connection, parsed by httptools, routed to
the origin, GRIP or WebSocket), ``responses`` (response and chunk bytes), ``headers`` (GRIP
header parameters, Pushpin's header rules)."""
