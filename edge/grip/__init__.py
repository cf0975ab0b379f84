"""GRIP over HTTP: ``instruct`` (origin response -> ``Hold``, sans-IO), ``cache`` (parsed
instructs shared by held sessions), ``holds`` (answer now, hold a response or a stream),
``session`` (held response and stream sessions: what a publish does to them), ``filters``,
``jsonpatch`` (``http-response`` body patches), ``sseid`` (SSE ``id:`` rendering)."""
