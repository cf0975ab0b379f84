"""The client worker's C reader (bench/creader.c): reads and counts the bodies of established
plain HTTP-stream / SSE clients and the frames of plain WebSocket clients, so the load
generator costs a few microseconds per delivery instead of ~30 (Python's recv, dechunk or
deframe and regex per event) and the servers, not the bench, are what a run measures.

It is compiled at run time with gcc into a cache directory (once per source version) and loaded
with ctypes; ``build()`` raises ``CReaderError`` with what to do when gcc is missing.  The
worker (``bench.swarm.Worker``) still makes every connection, reads every response head (a
WebSocket's 101), and reconnects what the server closed; only the body reads move here (and a
WebSocket client's pongs: the reader answers pings).  Counting is the same as
``Worker.consume`` (after ``dechunk`` or ``deframe``): a client's ``seen`` counts per step
seq, the latency histogram keyed ``second << 10 | bucket``, late and stale deliveries, the
probe cursor; ``Worker.absorb`` adds what the reader counted into the worker's own records.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("creader.c")
HIST_CHUNK = 65536
# a client's framing, as ``adopt`` takes it (creader.c's M_RAW, M_CHUNKED, M_WS); a bool is
# chunked (True) or raw (False)
MODES = {"raw": 0, "chunked": 1, "ws": 2}


class CReaderError(RuntimeError):
    pass


class _Stats(ctypes.Structure):
    _fields_ = [
        ("deliveries", ctypes.c_int64),
        ("stale", ctypes.c_int64),
        ("late", ctypes.c_int64),
        ("probed", ctypes.c_int64),
        ("max_lat", ctypes.c_double),
        ("last_rx", ctypes.c_double),
        ("rx_bytes", ctypes.c_int64),
    ]


def build() -> str:
    """The shared library's path, compiled now if this source version was not yet."""
    src = SOURCE.read_bytes()
    tag = hashlib.sha1(src).hexdigest()[:12]
    out_dir = Path(tempfile.gettempdir()) / f"gripcast-bench-{os.getuid()}"
    lib = out_dir / f"creader-{tag}.so"
    if lib.exists():
        return str(lib)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise CReaderError(
            "the bench's C reader needs a C compiler (gcc: apt-get install gcc); "
            "or run the clients in Python with --reader python"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run(
        [gcc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-lm"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise CReaderError(f"gcc could not build {SOURCE.name}:\n{proc.stderr[-2000:]}")
    os.replace(tmp, lib)
    return str(lib)


def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
    i64, dbl, cint = ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.cr_init.argtypes = [cint, dbl]
    lib.cr_step.argtypes = [i64, i64]
    lib.cr_t0.argtypes = [dbl]
    lib.cr_t0.restype = None
    lib.cr_seen.argtypes = [cint]
    lib.cr_seen.restype = ctypes.c_void_p
    lib.cr_stride.restype = i64
    lib.cr_adopt.argtypes = [cint, cint, cint, i64, i64, cint]
    lib.cr_release.argtypes = [cint]
    lib.cr_release.restype = None
    lib.cr_last.argtypes = [cint]
    lib.cr_last.restype = i64
    lib.cr_probe.argtypes = [cint]
    lib.cr_probe.restype = i64
    lib.cr_probed.argtypes = [cint]
    lib.cr_feed.argtypes = [cint, ctypes.c_char_p, i64, dbl]
    lib.cr_closed.argtypes = [cint]
    lib.cr_run.argtypes = [cint, cint]
    lib.cr_take_stats.argtypes = [ctypes.POINTER(_Stats)]
    lib.cr_take_stats.restype = None
    lib.cr_take_hist.argtypes = [ctypes.POINTER(i64), ctypes.POINTER(i64), cint]
    return lib


class CReader:
    """One worker's C reader for ``slots`` clients (slot = client index - the worker's first).
    One at a time per process: the library keeps its state in globals (a new one starts over)."""

    def __init__(self, slots: int, late_s: float, path: str | None = None) -> None:
        self.lib = _load(path or build())
        self.fd = self.lib.cr_init(slots, late_s)
        if self.fd < 0:
            raise CReaderError("the C reader could not start (memory or epoll)")
        self._stats = _Stats()
        self._keys = (ctypes.c_int64 * HIST_CHUNK)()
        self._counts = (ctypes.c_int64 * HIST_CHUNK)()

    def step(self, base: int, count: int) -> None:
        if self.lib.cr_step(base, count) != 0:
            raise CReaderError("the C reader could not allocate a step's counts")

    def set_t0(self, t0: float) -> None:
        self.lib.cr_t0(t0)

    def adopt(
        self, slot: int, fd: int, mode: str | bool, last: int, probe: int, probed: bool
    ) -> None:
        """Take client ``slot`` over: its socket ``fd`` (-1: none, bytes come by ``feed``), its
        framing ``mode`` ("raw", "chunked", "ws"; or a bool: chunked or not) and cursor."""
        if isinstance(mode, str):
            if mode not in MODES:
                raise ValueError(f"C reader framing {mode!r}: one of {', '.join(MODES)}")
            code = MODES[mode]
        else:
            code = MODES["chunked" if mode else "raw"]
        if self.lib.cr_adopt(slot, fd, code, last, probe, int(probed)) != 0:
            raise CReaderError(f"the C reader could not poll fd {fd}")

    def feed(self, slot: int, data: bytes, now: float) -> int:
        """Body bytes read by the worker: 1 when the stream ended (the last chunk, a WebSocket
        close frame), -1 on bad framing or a pong the socket did not take."""
        return self.lib.cr_feed(slot, data, len(data), now)

    def release(self, slot: int) -> tuple[int, int, bool]:
        """Give the client back: its cursor (last seq, last probe) and whether it was probed."""
        lib = self.lib
        lib.cr_release(slot)
        return lib.cr_last(slot), lib.cr_probe(slot), bool(lib.cr_probed(slot))

    def run(self, own_fd: int, ms: int) -> list[int]:
        """Read the sockets as they become ready for at most ``ms`` ms, returning early when
        the worker's own epoll ``own_fd`` has an event; the slots whose stream the server
        ended."""
        n = self.lib.cr_run(own_fd, ms)
        if n < 0:
            raise CReaderError("the C reader could not poll the worker's epoll")
        return [self.lib.cr_closed(i) for i in range(n)] if n else []

    def seen(self, slot: int, size: int) -> bytes:
        """The step's seen counts of ``slot`` (``size`` bytes at most)."""
        ptr = self.lib.cr_seen(slot)
        if not ptr:
            return b""
        return ctypes.string_at(ptr, min(size, self.lib.cr_stride()))

    def take_stats(self) -> _Stats:
        """Counters since the last call (deliveries, stale, late, newly probed, max latency, time
        of the last delivery)."""
        self.lib.cr_take_stats(ctypes.byref(self._stats))
        return self._stats

    def take_hist(self, hist: dict[int, int], late_hist: dict[int, int]) -> None:
        """Add the reader's histograms into ``hist`` / ``late_hist`` (and zero its own)."""
        while True:
            n = self.lib.cr_take_hist(self._keys, self._counts, HIST_CHUNK)
            keys, counts = self._keys, self._counts
            for i in range(n):
                k, v = keys[i], counts[i]
                if k < 0:
                    late_hist[-1 - k] = late_hist.get(-1 - k, 0) + v
                else:
                    hist[k] = hist.get(k, 0) + v
            if n < HIST_CHUNK:
                return
