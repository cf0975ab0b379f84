"""Running the broker in production: lifecycle (graceful stop, SIGHUP reload), reload (which
config keys apply live), metrics (Prometheus registry), stats (Pushpin's stats socket packets)
and opshttp (the /metrics, /health, /ready listener, shared with the edges)."""
