"""Reload the routes file when it changes (Pushpin watches its routes file, reference 1.2).

``stamp`` is a file's identity and shape (mtime, inode, size; None when it cannot be read):
cheap to take once a second, and it changes when the file is edited in place, replaced by a
rename (new inode) or removed.  A change is acted on once the stamp has held still for one
more poll (Pushpin waits a second after the change too), so an editor's half-written file is
not loaded.  A bad file is the reload's business: it logs and keeps the running routes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from broker.runtime.ticks import sleep_tick

log = logging.getLogger(__name__)

POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Stamp:
    mtime_ns: int
    inode: int
    size: int


def stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Stamp(st.st_mtime_ns, st.st_ino, st.st_size)


class Watch:
    """Sans-IO debounce: feed ``poll(stamp)`` once per interval; True means reload now."""

    __slots__ = ("seen", "pending")

    def __init__(self, first: Stamp | None) -> None:
        self.seen = first
        self.pending = False

    def poll(self, now: Stamp | None) -> bool:
        if now != self.seen:
            self.seen, self.pending = now, True
            return False
        if self.pending:
            self.pending = False
            return True
        return False


async def serve_watch(
    path: Callable[[], str], reload: Callable[[], object], interval_s: float = POLL_S
) -> None:
    """Poll ``path()`` (the current routes file: a reload may change it) every
    ``interval_s``; call ``reload()`` after it changed and held still."""
    current = path()
    watch = Watch(stamp(current) if current else None)
    while True:
        await sleep_tick(interval_s)  # with the process's other timers (broker.runtime.ticks)
        p = path()
        if p != current:  # routes_file itself changed (by a reload): watch the new one
            current, watch = p, Watch(stamp(p) if p else None)
            continue
        if p and watch.poll(stamp(p)):
            log.info("routes file changed, reloading path=%s", p)
            reload()
