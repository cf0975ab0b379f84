"""A load generator for new connections per second that is not the bottleneck (issue 14).

The bench's Python clients (``bench.swarm``, ``bench.handshakes``' blocking workers) make
their TLS handshakes through the ssl module on the same two cores as the servers: at a few
hundred TLS connections a second they, not the server, set the rate.  ``connload`` is a
small C program (``bench/connload.c``: one epoll loop, OpenSSL on the socket, no Python per
connection), compiled at first use with ``gcc`` against the system's OpenSSL into a cache
directory (``$XDG_CACHE_HOME/gripcast`` or ``~/.cache/gripcast``; the file name carries the
source's hash, so an edited source is rebuilt).  ``run()`` starts ``procs`` copies at
``concurrency`` connections in flight in all, for ``duration_s`` seconds, and merges what
they report: connections/s, handshake and total latency p50/p99, errors by kind, and the
client's own CPU per connection (``getrusage`` of each copy) so that a reader can see who
was the limit.

Each connection is ``mode`` (``plain``, ``tls1.2``, ``tls1.3``; ``resume``: offer the
previous connection's session), then with ``request`` the request (``%d`` in it: the
connection's number modulo ``channels``) and the response read until ``until``, then closed.
Without a request: plain half-closes and reads to the server's close; TLS closes once its
handshake is complete.

``python -m bench.connload --port P [--mode tls1.2] ...`` runs it by hand and prints the
report (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).with_name("connload.c")
MODES = ("plain", "tls1.2", "tls1.3")
ERROR_KINDS = ("connect", "handshake", "write", "read", "closed", "timeout")
# the bench's stream request (as bench.handshakes --request): the origin holds it, and the
# stream's first bytes ("[open]") are the answer through the proxy
STREAM_REQUEST = "GET /stream/hs%d HTTP/1.1\r\nHost: bench\r\n\r\n"
STREAM_UNTIL = "[open]"


class BuildError(RuntimeError):
    """connload cannot be built here (no compiler, no OpenSSL headers, a compile error)."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    port: int
    mode: str = "plain"
    resume: bool = False
    concurrency: int = 64
    duration_s: float = 5.0
    conns: int = 0  # stop after this many (0: the duration only)
    request: str = ""  # "" : no request (see the module docstring)
    until: str = "\r\n\r\n"
    channels: int = 50
    procs: int = 1
    host: str = "127.0.0.1"
    sources: tuple[str, ...] = ()  # source addresses, round robin (e.g. 127.0.0.2, ...)
    sni: str = ""
    timeout_s: float = 10.0
    max_errors: int = 0  # stop after this many failed connections (0: never)


def check_spec(spec: LoadSpec) -> list[str]:
    """Every problem with ``spec`` (empty: fine)."""
    problems = []
    if not 0 < spec.port < 65536:
        problems.append(f"port {spec.port}: not a TCP port")
    if spec.mode not in MODES:
        problems.append(f"mode {spec.mode!r}: one of {', '.join(MODES)}")
    if spec.resume and spec.mode == "plain":
        problems.append("resume: only with a TLS mode")
    if spec.procs < 1:
        problems.append(f"procs {spec.procs}: at least 1")
    if spec.concurrency < spec.procs:
        problems.append(f"concurrency {spec.concurrency}: at least one per process ({spec.procs})")
    if spec.duration_s <= 0:
        problems.append(f"duration_s {spec.duration_s}: must be > 0")
    if spec.conns < 0:
        problems.append(f"conns {spec.conns}: must be >= 0")
    if spec.channels < 1:
        problems.append(f"channels {spec.channels}: at least 1")
    if spec.max_errors < 0:
        problems.append(f"max_errors {spec.max_errors}: must be >= 0")
    if spec.timeout_s <= 0:
        problems.append(f"timeout_s {spec.timeout_s}: must be > 0")
    if not spec.until:
        problems.append("until: must not be empty")
    if spec.request:
        rest = spec.request.replace("%d", "", 1)
        if "%" in rest:
            problems.append("request: at most one %d and no other % (it is a printf format)")
        if len(spec.request.encode()) > 1000:
            problems.append("request: longer than 1,000 bytes")
    return problems


def _escape(s: str) -> str:
    """For connload's ``--request`` / ``--until`` (it reads \\r \\n \\t \\\\)."""
    return s.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as integers go (the first get the rest)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def argv_for(spec: LoadSpec, binary: str) -> list[list[str]]:
    """The command line of each of the ``spec.procs`` copies."""
    out = []
    conns = split(spec.conns, spec.procs) if spec.conns else [0] * spec.procs
    for i, conc in enumerate(split(spec.concurrency, spec.procs)):
        argv = [
            binary,
            f"--host={spec.host}",
            f"--port={spec.port}",
            f"--mode={spec.mode}",
            f"--concurrency={conc}",
            f"--duration={spec.duration_s}",
            f"--channels={spec.channels}",
            f"--timeout={spec.timeout_s}",
            f"--until={_escape(spec.until)}",
        ]
        if conns[i]:
            argv.append(f"--conns={conns[i]}")
        if spec.request:
            argv.append(f"--request={_escape(spec.request)}")
        if spec.resume:
            argv.append("--resume")
        if spec.sources:
            argv.append("--src=" + ",".join(spec.sources))
        if spec.sni:
            argv.append(f"--sni={spec.sni}")
        if spec.max_errors:
            argv.append(f"--max-errors={max(1, spec.max_errors // spec.procs)}")
        out.append(argv)
    return out


# -- building ------------------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gripcast"


def build(source: Path = SOURCE, cache: Path | None = None) -> str:
    """The path of the compiled connload (compiled once per source version)."""
    return build_c(source, "connload", ["-lssl", "-lcrypto"], cache)


def ready_binary(scenario: str, problems: list[str], build: Callable[[], str]) -> str | None:
    """The start of a ``bench`` scenario that runs a C helper: print each of ``problems``
    (``bench <scenario>: ...``) or the ``BuildError`` of ``build``; the binary, or None when
    the scenario should exit 2."""
    if problems:
        for p in problems:
            print(f"bench {scenario}: {p}")
        return None
    try:
        return build()
    except BuildError as exc:
        print(exc)
        return None


def build_c(source: Path, name: str, libs: list[str], cache: Path | None = None) -> str:
    """The path of ``source`` compiled with gcc into ``cache`` as ``<name>-<hash>`` (once per
    source version); ``BuildError`` says what to install when it cannot be built."""
    text = source.read_bytes()
    digest = hashlib.sha256(text).hexdigest()[:16]
    cache = cache or cache_dir()
    binary = cache / f"{name}-{digest}"
    if binary.exists():
        return str(binary)
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BuildError(f"bench's {name} needs a C compiler (apt-get install gcc)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{name}-{digest}.{os.getpid()}.tmp"
    proc = subprocess.run(
        [cc, "-O2", "-o", str(tmp), str(source), *libs],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "openssl/ssl.h" in err or "-lssl" in err or "-lcrypto" in err:
            raise BuildError(
                f"bench's {name} needs OpenSSL's headers and libraries "
                "(apt-get install libssl-dev):\n" + err
            )
        raise BuildError(f"bench's {name}: {cc} failed:\n{err}")
    os.replace(tmp, binary)  # atomic: a parallel build leaves one good file
    return str(binary)


# -- the report ----------------------------------------------------------------------------


def merge_hist(hists: list[list[list[int]]]) -> dict[int, int]:
    """Bucket -> count over several copies' histograms (``[[bucket, count], ...]`` each)."""
    out: dict[int, int] = {}
    for h in hists:
        for bucket, count in h:
            out[bucket] = out.get(bucket, 0) + count
    return out


def percentile_us(hist: dict[int, int], q: float, bucket_us: int) -> float | None:
    """The ``q`` quantile (0..1) of a bucketed histogram, as the bucket's upper edge in us
    (None when empty): the smallest bucket with at least ``q`` of the count at or below it."""
    total = sum(hist.values())
    if not total:
        return None
    need = max(1, math.ceil(round(q * total, 9)))  # at least ceil(q * total) samples
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= need:
            return float((bucket + 1) * bucket_us)
    return float((max(hist) + 1) * bucket_us)  # pragma: no cover - need <= total


@dataclass(frozen=True, slots=True)
class LoadReport:
    mode: str
    resume: bool
    procs: int
    concurrency: int
    completed: int
    wall_s: float
    per_s: float
    resumed: int
    errors: dict[str, int]
    first_error: dict[str, str]
    handshake_p50_ms: float | None
    handshake_p99_ms: float | None
    total_p50_ms: float | None
    total_p99_ms: float | None
    client_cpu_s: float
    client_cpu_ms_per_conn: float | None
    client_util: float  # client CPU seconds per wall second (cores busy)
    raw: list[dict] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__slots__ if k != "raw"}
        return d

    def line(self) -> str:
        errs = sum(self.errors.values())
        return (
            f"{self.mode}{'-resume' if self.resume else ''}: {self.completed} conns in "
            f"{self.wall_s:.2f}s = {self.per_s:.0f}/s, handshake p50/p99 "
            f"{_ms(self.handshake_p50_ms)}/{_ms(self.handshake_p99_ms)} ms, total p50/p99 "
            f"{_ms(self.total_p50_ms)}/{_ms(self.total_p99_ms)} ms, errors {errs}, client "
            f"{_ms(self.client_cpu_ms_per_conn)} ms/conn ({self.client_util:.2f} cores)"
        )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def report(outputs: list[dict]) -> LoadReport:
    """One report from the JSON of each copy (run side by side for the same wall time)."""
    if not outputs:
        raise ValueError("no connload output to report")
    bucket_us = outputs[0]["bucket_us"]
    completed = sum(o["completed"] for o in outputs)
    wall = max(o["wall_s"] for o in outputs)
    cpu = sum(o["cpu_user_s"] + o["cpu_sys_s"] for o in outputs)
    errors = {k: sum(o["errors"].get(k, 0) for o in outputs) for k in ERROR_KINDS}
    first_error: dict[str, str] = {}
    for o in outputs:
        for k, v in o.get("first_error", {}).items():
            first_error.setdefault(k, v)
    hs = merge_hist([o["handshake_hist"] for o in outputs])
    total = merge_hist([o["total_hist"] for o in outputs])

    def ms(hist: dict[int, int], q: float) -> float | None:
        us = percentile_us(hist, q, bucket_us)
        return None if us is None else round(us / 1000, 3)

    return LoadReport(
        mode=outputs[0]["mode"],
        resume=outputs[0]["resume"],
        procs=len(outputs),
        concurrency=sum(o["concurrency"] for o in outputs),
        completed=completed,
        wall_s=round(wall, 3),
        per_s=round(completed / wall, 1) if wall > 0 else 0.0,
        resumed=sum(o["resumed"] for o in outputs),
        errors=errors,
        first_error=first_error,
        handshake_p50_ms=ms(hs, 0.50),
        handshake_p99_ms=ms(hs, 0.99),
        total_p50_ms=ms(total, 0.50),
        total_p99_ms=ms(total, 0.99),
        client_cpu_s=round(cpu, 3),
        client_cpu_ms_per_conn=round(1000 * cpu / completed, 4) if completed else None,
        client_util=round(cpu / wall, 3) if wall > 0 else 0.0,
        raw=outputs,
    )


# -- running -------------------------------------------------------------------------------


def start(spec: LoadSpec, binary: str | None = None) -> list[subprocess.Popen]:
    """Start the copies (``collect`` waits for them): lets a caller sample the servers'
    CPU while they run."""
    problems = check_spec(spec)
    if problems:
        raise ValueError("connload: " + "; ".join(problems))
    binary = binary or build()
    return [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argv_for(spec, binary)
    ]


def collect(running: list[subprocess.Popen], timeout_s: float) -> LoadReport:
    outputs = []
    for p in running:
        out, err = p.communicate(timeout=timeout_s)
        if p.returncode != 0:
            raise RuntimeError(f"connload exited {p.returncode}: {err.strip()}")
        outputs.append(json.loads(out))
    return report(outputs)


def run(spec: LoadSpec, binary: str | None = None) -> LoadReport:
    return collect(start(spec, binary), spec.duration_s + spec.timeout_s + 30)


def parse_args(argv: list[str] | None = None) -> LoadSpec:
    p = argparse.ArgumentParser(prog="python -m bench.connload", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=MODES, default="plain")
    p.add_argument("--resume", action="store_true", help="offer the previous session (TLS)")
    p.add_argument("--concurrency", type=int, default=64, help="in flight, all copies (64)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds (5)")
    p.add_argument("--conns", type=int, default=0, help="stop after N connections (0: no)")
    p.add_argument(
        "--request",
        choices=("none", "stream"),
        default="stream",
        help="stream: GET /stream/hs<n> and read to its first bytes (default); none: connect "
        "(and handshake) only",
    )
    p.add_argument("--channels", type=int, default=50)
    p.add_argument("--procs", type=int, default=1, help="client processes (1)")
    p.add_argument("--src", default="", help="source addresses, comma-separated")
    p.add_argument("--sni", default="")
    p.add_argument("--timeout", type=float, default=10.0, help="per connection, seconds (10)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    stream = a.request == "stream"
    spec = LoadSpec(
        port=a.port,
        host=a.host,
        mode=a.mode,
        resume=a.resume,
        concurrency=a.concurrency,
        duration_s=a.duration,
        conns=a.conns,
        request=STREAM_REQUEST if stream else "",
        until=STREAM_UNTIL if stream else "\r\n\r\n",
        channels=a.channels,
        procs=a.procs,
        sources=tuple(s for s in a.src.split(",") if s),
        sni=a.sni,
        timeout_s=a.timeout,
    )
    problems = check_spec(spec)
    if problems:
        p.error("; ".join(problems))
    return spec


def main(argv: list[str] | None = None) -> int:
    spec = parse_args(argv)
    r = run(spec)
    if "--json" in (argv or []):
        print(json.dumps(r.as_dict(), indent=1))
    else:
        print(r.line())
        for kind, msg in r.first_error.items():
            print(f"  first {kind} error: {msg}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
