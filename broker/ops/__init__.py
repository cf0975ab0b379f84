"""Running the broker in production: lifecycle (graceful stop, SIGHUP reload), metrics
(Prometheus registry), stats (Pushpin's stats socket packets).  What the edges share (reload
planning, the /metrics listener) is in ``broker.runtime``."""
