"""The bench origin in C (``bench/corigin.c``), for scenarios where the origin's own CPU counts.

``bench.origin`` is one asyncio process: under ``bench connrate`` at ~15,000 new connections a
second it takes 0.014-0.025 ms of CPU a request, 12-20% of what the whole machine spends on a
connection, on the same two cores as the target.  ``COrigin`` answers the same requests with
the same bytes (``bench.origin.respond`` without ``resume`` or keep-alives: ``/stream/<ch>``,
``/sse/<ch>``, ``/lp/<ch>``, ``/ws/<ch>`` WebSocket-over-HTTP, a 404 for anything else; a test
compares them byte for byte) from one epoll loop in C, so the load generator and the origin
take less of the machine and the rate shows more of the target.  Both targets get the same
origin in a run.

It is compiled at first use with ``gcc`` into the cache ``bench.connload`` uses (the file name
carries the source's hash).  ``COrigin`` has ``Origin``'s interface (``port``, ``pid``,
``start``, ``stop``); the listening socket is bound here and inherited by the C process.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
from pathlib import Path

from bench import connload
from bench.procs import raise_nofile

SOURCE = Path(__file__).with_name("corigin.c")


def build(cache: Path | None = None) -> str:
    """The path of the compiled C origin (``connload.BuildError`` when it cannot be built)."""
    return connload.build_c(SOURCE, "corigin", [], cache)


class COrigin:
    """The C origin in a child process, listening on a port bound before it starts."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or build()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> COrigin:
        raise_nofile()  # (the child inherits the raised soft limit)
        fd = self.sock.fileno()
        self.proc = subprocess.Popen(
            [self.binary, str(fd)],
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise TimeoutError(f"the C origin did not start (said {line!r})")
        self.sock.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.sock.close()
