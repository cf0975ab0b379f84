"""The tests' import path for a real ``redis-server`` (``RedisServer``); the implementation is
``bench.redisprocs`` (shared with the benches and ``python -m bench chaos``)."""

from __future__ import annotations

from bench.redisprocs import RedisServer, redis_available

__all__ = ["RedisServer", "redis_available"]
