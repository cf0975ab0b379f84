"""The tests' import path for a Redis Cluster of real processes (``RedisCluster``: 3 masters,
3 replicas, with kill / wait_failover / restart); the implementation is ``bench.redisprocs``."""

from __future__ import annotations

from bench.redisprocs import RedisCluster, cli_available

__all__ = ["RedisCluster", "cli_available"]
