"""The tests' import path for a Redis Sentinel deployment of real processes (``SentinelGroup``);
the implementation is ``bench.redisprocs`` (``python -m bench chaos`` uses it too)."""

from __future__ import annotations

from bench.redisprocs import SentinelGroup, command

__all__ = ["SentinelGroup", "command"]
