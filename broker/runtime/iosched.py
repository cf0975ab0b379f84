"""libzmq's I/O threads under ``SCHED_BATCH`` (Linux; ``zmq_io_batch``, on by default).

A ``zmq_send`` into a pipe whose I/O thread sleeps wakes that thread (an ``eventfd`` write).
Under the default policy the woken thread may preempt the sender on its own core: the broker's
main thread, in the middle of a fan-out loop, then waits while the I/O thread, and the edges it
wakes in turn, run.  Measured at 10,000 channels of one client, 30,000 items/s: the fan-out
loop took 3.1 us of wall time an item for 1.8 us of CPU; with the I/O threads under
``SCHED_BATCH`` 1.5 us for 1.4 (bench/RESULTS.md, thirteenth session).  ``SCHED_BATCH`` keeps the
thread's fair share of CPU (same nice value, same weight); it only gives up preempting a
running thread when it wakes.  An idle core still runs it at once.

Any unprivileged thread may move itself or a thread of its process from ``SCHED_OTHER`` to
``SCHED_BATCH`` (sched(7)).  libzmq's own ``ZMQ_THREAD_SCHED_POLICY`` would abort the process
if the call were refused (a seccomp filter); here a refusal is logged and the threads stay as
they are.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import zmq

log = logging.getLogger(__name__)

IO_THREAD_PREFIX = "ZMQbg/IO/"  # libzmq names its I/O threads ZMQbg/IO/0, ZMQbg/IO/1, ...
NAME_WAIT_S = 1.0  # at most this long for a just-started I/O thread to take its name
_TASKS = Path("/proc/self/task")


def io_thread_ids(tasks: Path = _TASKS) -> list[int]:
    """The thread ids of this process's libzmq I/O threads (every context's), by name."""
    out: list[int] = []
    try:
        entries = list(tasks.iterdir())
    except OSError:
        return out
    for entry in entries:
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if comm.startswith(IO_THREAD_PREFIX) and entry.name.isdigit():
            out.append(int(entry.name))
    return sorted(out)


def batch_io_threads(ctx: zmq.Context[zmq.Socket[bytes]]) -> int:
    """Put the I/O threads of this process under ``SCHED_BATCH``, starting ``ctx``'s first
    (libzmq starts them with a context's first socket).  Returns how many threads were moved;
    0 when the platform has no ``SCHED_BATCH`` or the kernel refused (logged)."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return 0
    probe = ctx.socket(zmq.PAIR)  # starts the I/O threads if no socket has yet
    probe.close(linger=0)
    # a new thread names itself once running: wait (briefly, at start) until the context's
    # I/O threads are found by name
    want = int(ctx.get(zmq.IO_THREADS))
    deadline = time.monotonic() + NAME_WAIT_S
    tids = io_thread_ids()
    while len(tids) < want and time.monotonic() < deadline:
        time.sleep(0.001)
        tids = io_thread_ids()
    if len(tids) < want:
        log.warning(
            "zmq_io_batch: %d of libzmq's %d I/O thread(s) found by name; the others keep "
            "the default policy",
            len(tids),
            want,
        )
    moved = 0
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) != policy:
                os.sched_setscheduler(tid, policy, os.sched_param(0))
            moved += 1
        except ProcessLookupError:
            continue
        except OSError as exc:
            log.warning(
                "zmq_io_batch: could not put libzmq's I/O thread %d under SCHED_BATCH (%s); "
                "it keeps the default policy",
                tid,
                exc,
            )
    return moved
