"""The one place logging is configured: stderr (journald under systemd), one line per record,
``<time> <role> <LEVEL> <logger>: <message>``.  Composition roots call ``configure_logging``
once at process start; library modules only ever use ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str, role: str) -> None:
    """Configure the root logger for process ``role`` (idempotent: a second call only sets
    the level, e.g. from a reload)."""
    root = logging.getLogger()
    if root.handlers:
        root.setLevel(level.upper())
        return
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def twins_description() -> str:
    """Which ``_speedups`` twins this process runs, for its start-up log line."""
    import _speedups

    return "compiled (Cython)" if _speedups.COMPILED else "pure-Python"
