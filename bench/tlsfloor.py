"""``python -m bench.tlsfloor``: what OpenSSL alone charges a server for one full handshake.

Both ends of each handshake are ``ssl.SSLObject``s on memory BIOs in this one process: no
sockets, no event loop, no server around it.  Only the server side's calls are timed
(``time.thread_time`` around its ``do_handshake`` and the bytes moved through its BIOs), so
the figure is OpenSSL's own server work for a full handshake (ECDHE, the certificate's
signature, the key schedule, the session ticket) with the bench's kind of certificate
(``bench.certs``: ECDSA P-256), the floor under any server's TLS connection cost on this
machine and this libssl.  Issue 14 compares it with what TLS adds to a gripcast connection
(bench/RESULTS.md).

    .venv/bin/python -m bench.tlsfloor --handshakes 2000
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from bench.certs import write_self_signed

VERSIONS = {"tls1.3": ssl.TLSVersion.TLSv1_3, "tls1.2": ssl.TLSVersion.TLSv1_2}


def contexts(version: ssl.TLSVersion, tickets: int) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context as the edge makes one (bench certificate) and a client that does
    not verify it (as the bench's clients)."""
    with tempfile.TemporaryDirectory() as d:
        crt, key = write_self_signed(Path(d), "floor")
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(crt, key)
    server.minimum_version = server.maximum_version = version
    server.set_alpn_protocols(["http/1.1"])
    if version is ssl.TLSVersion.TLSv1_3:
        server.num_tickets = tickets
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_alpn_protocols(["http/1.1"])
    return server, client


def one_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> float:
    """Run one full handshake between two in-memory ends; the server side's CPU seconds."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    spent = 0.0
    t = time.thread_time()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    spent += time.thread_time() - t
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server_done = client_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            t = time.thread_time()
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.thread_time() - t
        t = time.thread_time()
        flight = s_out.read()
        spent += time.thread_time() - t
        c_in.write(flight)
        if server_done and client_done and not flight:
            break
    if not (server_done and client_done):
        raise RuntimeError("the in-memory handshake did not complete")
    return spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.tlsfloor", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--handshakes", type=int, default=2000, help="per case (default 2,000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    ap.add_argument("--tickets", type=int, default=1, help="TLS 1.3 tickets sent (edge: 1)")
    args = ap.parse_args(argv)
    print(f"{ssl.OPENSSL_VERSION}; ECDSA P-256 certificate; server side only, in-process")
    for name, version in VERSIONS.items():
        server_ctx, client_ctx = contexts(version, args.tickets)
        for _ in range(50):  # warm caches and OpenSSL's lazily fetched algorithms
            one_handshake(server_ctx, client_ctx)
        per = []
        for _ in range(args.rounds):
            total = sum(one_handshake(server_ctx, client_ctx) for _ in range(args.handshakes))
            per.append(total / args.handshakes * 1e3)
        print(
            f"{name}: server CPU ms per full handshake, rounds "
            + " / ".join(f"{x:.3f}" for x in per)
            + f" (median {statistics.median(per):.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
