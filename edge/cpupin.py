"""Each edge on a CPU of its own, and new connections steered to it (``edge_cpu_affinity``).

With ``edge_cpu_affinity = true`` edge ``i`` pins its main thread to the ``i``-th CPU it may
use (``os.sched_getaffinity``: the host's CPUs, or the cpuset or ``CPUAffinity=`` it was
given; modulo their number) and sets ``SO_INCOMING_CPU`` to that CPU on its listening sockets.
The edges' listeners share their port (``SO_REUSEPORT``); a recent Linux kernel then hands a
new connection to a listener whose CPU is the one that processed the connection's packets,
when there is one, and by hash otherwise (this machine's 6.18 does; an older kernel may spread
them by hash regardless, and pinning alone gains nothing: see below).  A
connection is then served on the CPU that received it: no wake-up of an edge on the other CPU
(an inter-processor interrupt each), and each edge keeps its caches, which the scheduler's
moves otherwise share between the edges and whatever else runs.

Measured (bench/RESULTS.md, "Twenty-fifth session"): ``bench connrate`` with the default two
edges on this 2-CPU machine, 17,700-19,200 -> 21,500-23,600 new connections/s, the edges'
CPU a connection 0.071-0.080 -> 0.061-0.065 ms (what one edge alone costs).  Pinning without
the steering changed nothing.

Off by default: it only helps where each CPU receives its share of the connections' packets
(a NIC with a receive queue per CPU, RSS, or RPS; local clients spread over the CPUs).  With a
single receive queue every connection would arrive on one CPU and go to the edges pinned
there.  A refusal (not Linux, a sandbox) is logged and the edge runs unpinned.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection, Iterable
from typing import Any

log = logging.getLogger(__name__)

# <asm-generic/socket.h>; Python's socket module names it from 3.12 only
SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)


def choose_cpu(index: int, allowed: Collection[int]) -> int | None:
    """The CPU of edge ``index`` among ``allowed`` (in order, modulo their number); None when
    there is none."""
    if not allowed:
        return None
    cpus = sorted(allowed)
    return cpus[index % len(cpus)]


def pin(index: int, listeners: Iterable[Any]) -> int | None:
    """Pin the calling thread (the edge's main thread) to edge ``index``'s CPU and steer
    ``listeners``' new connections to it (``SO_INCOMING_CPU``); the CPU, or None when refused
    (logged)."""
    try:
        cpu = choose_cpu(index, os.sched_getaffinity(0))
        if cpu is None:
            log.warning("edge_cpu_affinity: no CPU allowed to this process; not pinned")
            return None
        os.sched_setaffinity(0, {cpu})  # (0: this thread; libzmq's I/O threads stay free)
    except (AttributeError, OSError) as exc:  # not Linux, or refused
        log.warning("edge_cpu_affinity: could not pin edge %d (%s); not pinned", index, exc)
        return None
    for sock in listeners:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, cpu)
        except OSError as exc:
            log.warning(
                "edge_cpu_affinity: SO_INCOMING_CPU refused on a listener (%s): its new "
                "connections are spread by hash",
                exc,
            )
    log.info("edge %d pinned to CPU %d (new connections received there come here)", index, cpu)
    return cpu
