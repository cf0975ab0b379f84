"""Process plumbing shared by the broker and the edges (edges may import these).

zmqtrio (the one ZeroMQ/trio bridge), http1 (the one HTTP/1 request reader of the broker's
publish API and ops listeners), logsetup (logging configured once per process), sdnotify
(systemd readiness), procsignals (signal handling around start and exit), reload (which
config keys apply live on SIGHUP) and opshttp (the /metrics, /health, /ready listener).
"""
