"""The edge's TLS accept + handshake path alone, for A/B runs of edge/tls.py and edge/tlsconn.py.

``python -m bench.tlspath [--case tls1.3|tls1.2|plain] [--conns N] [--procs P] [--profile [F]]
[--perf FILE] [--defer-accept]``:
a trio server in a child process (``edge.fastpath.accept_loop`` + ``TlsServer
.serve_connection``, the connection read to its end and closed; no HTTP), blocking client
processes from ``bench.handshakes`` (full handshake, then close), and the server process's
user + system CPU per connection from ``getrusage``.  ``--perf FILE`` records the server's
serving (not its start-up) with ``perf record -g``: C frames, so the split between OpenSSL,
CPython and the kernel.  ``--profile F.prof`` saves the server's cProfile for ``pstats``
(call counts per connection are exact where times are not); ``--profile`` alone prints its top
functions (wall-clock times: a ``write()`` that waits for the CPU looks long).  Run it against
two trees (``PYTHONPATH=<tree>``) alternately in the same minutes: the machine's load moves
the figures more than small changes do.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import trio

from bench.certs import write_self_signed
from bench.handshakes import ClientJob, _client


def _serve(
    cert: str, key: str, case: str, profile: str, perf: str, defer: bool, port_q, done, out
) -> None:
    from edge import fastpath
    from edge.tls import load_certificates
    from edge.tlsconn import TlsConn, TlsServer

    certs = load_certificates(SimpleNamespace(tls_cert=cert, tls_key=key, tls_certs_dir=""))
    assert certs is not None
    server = TlsServer(certs)

    async def serve_tls(sock: trio.socket.SocketType, addr: object, conn: TlsConn) -> None:
        try:
            while await conn.recv():
                pass
        except OSError:
            pass
        sock.close()

    async def serve_plain(sock: trio.socket.SocketType) -> None:
        with sock:
            try:
                while await sock.recv(65536):
                    pass
            except OSError:
                pass

    async def main(lsock: trio.socket.SocketType, port: int) -> None:
        async with trio.open_nursery() as nursery:

            def accepted(sock: trio.socket.SocketType, addr: object) -> None:
                if case == "plain":
                    nursery.start_soon(serve_plain, sock)
                else:
                    nursery.start_soon(
                        partial(
                            server.serve_connection,
                            sock,
                            addr,  # type: ignore[arg-type]
                            port,
                            serve_tls,
                            handshake_timeout_s=10.0,
                        )
                    )

            nursery.start_soon(server.sweep)  # the handshakes' deadlines, as on an edge
            nursery.start_soon(fastpath.accept_loop, lsock, accepted)
            await trio.to_thread.run_sync(done.wait)
            nursery.cancel_scope.cancel()

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if defer and case != "plain":  # the ClientHello is in when the connection is accepted
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 10)
    ls.setblocking(False)
    port = ls.getsockname()[1]
    recorder = _perf_record(perf) if perf else None  # attached before the clients start
    port_q.put(port)
    fastpath.tune_gc()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    trio.run(main, trio.socket.from_stdlib_socket(ls), port)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    if prof is not None:
        import pstats

        prof.disable()
        if profile.endswith(".prof"):  # for pstats (callers, call counts per connection)
            prof.dump_stats(profile)
        else:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    st = server.statistics()
    out.put(
        {
            "user_s": r1.ru_utime - r0.ru_utime,
            "sys_s": r1.ru_stime - r0.ru_stime,
            "handshakes": st.handshakes,
            "failures": st.failures,
        }
    )


def _perf_record(path: str) -> subprocess.Popen:
    """``perf record`` of this process (the server) from now on: the steady state only, not
    the imports and certificate loading before it."""
    rec = subprocess.Popen(
        ["perf", "record", "-F", "4000", "-g", "-o", path, "-p", str(os.getpid())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # perf attaches
    return rec


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tlspath", description=__doc__)
    p.add_argument("--case", choices=("tls1.3", "tls1.2", "plain"), default="tls1.3")
    p.add_argument("--conns", type=int, default=1500)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument(
        "--profile",
        nargs="?",
        const="print",
        default="",
        help="cProfile the server: print the top functions, or save them to FILE.prof",
    )
    p.add_argument("--perf", default="", help="perf record the server's run into this file")
    p.add_argument(
        "--defer-accept",
        action="store_true",
        help="TCP_DEFER_ACCEPT on the listener (tried in round 3: no measured gain; the edge "
        "does not set it)",
    )
    args = p.parse_args()
    cert, key = write_self_signed(Path(tempfile.mkdtemp(prefix="bench-tlspath-")), "server")
    ctx = multiprocessing.get_context("fork")
    port_q, out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    srv = ctx.Process(
        target=_serve,
        args=(
            cert,
            key,
            args.case,
            args.profile,
            args.perf,
            args.defer_accept,
            port_q,
            done,
            out,
        ),
    )
    srv.start()
    port = port_q.get(timeout=30)
    per = args.conns // args.procs
    pipes, workers = [], []
    t0 = time.monotonic()
    for _ in range(args.procs):
        a, b = ctx.Pipe(duplex=False)
        w = ctx.Process(target=_client, args=(ClientJob(port, args.case, per, False), b))
        w.start()
        pipes.append(a)
        workers.append(w)
    results = [a.recv() for a in pipes]
    wall = time.monotonic() - t0
    for w in workers:
        w.join()
    time.sleep(0.3)
    done.set()
    r = out.get(timeout=30)
    srv.join()
    n = per * args.procs
    print(
        f"{args.case}: {n} connections in {wall:.1f}s; server CPU "
        f"{1000 * (r['user_s'] + r['sys_s']) / n:.3f} ms/conn (user {1000 * r['user_s'] / n:.3f}, "
        f"sys {1000 * r['sys_s'] / n:.3f}); handshakes {r['handshakes']}, failures "
        f"{r['failures']}; client failures {sum(x['failed'] for x in results)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
