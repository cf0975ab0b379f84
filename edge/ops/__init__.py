"""Operations: ``lifecycle`` (signals, graceful drain, reload), ``metrics`` (Prometheus and
health endpoints), ``statsreport`` and ``connstats`` (Pushpin-style stats reports to the broker)."""
