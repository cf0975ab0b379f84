"""The floor under "new connections/s" (issue 16): ``bench/connfloor.c`` as a connrate target.

``python -m bench connrate --target floor`` runs the same rounds (the same origin, clients,
windows and CPU accounting) against ``bench/connfloor.c`` instead of a server: ``--edges``
forked C processes on one ``SO_REUSEPORT`` port, each one epoll loop doing the least any GRIP
proxy must do for a new held stream (accept, read the request, ask the origin over a kept-alive
connection, read its answer, write the stream head and first chunk, hold the client).  Its rate
is what the machine, the origin and the clients allow a proxy that costs almost nothing in user
space: the ceiling for any proxy's connection rate on this machine, to read beside the
``gripcast / Pushpin`` ratio's goal.  It subscribes nothing and has no publish side, so the
target skips the warm-up's publishing (one proxied request only).  ``--floor python`` runs its
plain-Python twin (``bench/connfloor_py.py``) instead: the interpreter's share of the floor;
``--floor trio`` its trio twin (``bench/connfloor_trio.py``: a task per connection, as
gripcast's edge): trio's share.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.connload import build_c
from bench.procs import descendants, free_ports, stop_group
from bench.targets import Target, wait_proxied

SOURCE = Path(__file__).with_name("connfloor.c")
REPO = SOURCE.parent.parent
LANGS = ("c", "python", "trio")
MODULES = {"python": "bench.connfloor_py", "trio": "bench.connfloor_trio"}


def build(source: Path = SOURCE, cache: Path | None = None) -> str:
    """The path of the compiled connfloor (compiled once per source version)."""
    return build_c(source, "connfloor", [], cache)


class FloorTarget(Target):
    """``connfloor`` with ``workers`` processes in front of the bench origin."""

    name = "floor"

    def __init__(self, origin_port: int, workers: int, lang: str = "c") -> None:
        if lang not in LANGS:
            raise ValueError(lang)
        self.origin_port = origin_port
        self.workers = workers
        self.lang = lang
        self.client_port = free_ports(1)[0]

    def start(self) -> FloorTarget:
        if self.lang == "c":
            program = [build()]
        else:  # bench/connfloor_py.py or bench/connfloor_trio.py
            program = [sys.executable, "-m", MODULES[self.lang]]
        argv = [*program, str(self.client_port), str(self.origin_port), str(self.workers)]
        self.proc = subprocess.Popen(argv, cwd=REPO, start_new_session=True, stderr=subprocess.PIPE)
        wait_proxied(self.client_port, 10.0, self.proc)
        return self

    def pids(self) -> list[int]:
        """The workers (the forking parent only waits: left out of the CPU figures)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [p for p in descendants(self.proc.pid) if p != self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
