"""libzmq's I/O threads under SCHED_BATCH (broker.runtime.iosched, ``zmq_io_batch``)."""

from __future__ import annotations

import os
import threading

import pytest
import zmq

from broker.config import Config, load_config
from broker.errors import ConfigError
from broker.runtime.iosched import IO_THREAD_PREFIX, batch_io_threads, io_thread_ids

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH") or not os.path.isdir("/proc/self/task"),
    reason="Linux scheduling policies",
)


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid)


def test_io_threads_found_by_name_and_moved():
    ctx = zmq.Context(io_threads=2)
    try:
        before = set(io_thread_ids())
        moved = batch_io_threads(ctx)  # starts this context's threads (no socket yet)
        mine = set(io_thread_ids()) - before
        assert len(mine) == 2  # this context's two I/O threads, by their libzmq names
        assert moved >= 2
        for tid in mine:
            assert _policy(tid) == os.SCHED_BATCH
        # the calling thread keeps its policy: only the I/O threads change
        assert _policy(threading.get_native_id()) == os.SCHED_OTHER
        # idempotent: a second call leaves them so and fails on nothing (the count may
        # differ: other tests' contexts can end meanwhile)
        assert batch_io_threads(ctx) >= 2
        for tid in mine:
            assert _policy(tid) == os.SCHED_BATCH
    finally:
        ctx.term()


def test_io_thread_ids_reads_task_names(tmp_path):
    # a /proc/<pid>/task layout: only threads named ZMQbg/IO/<n> are I/O threads
    for tid, comm in (
        (10, "python"),
        (11, "ZMQbg/Reaper"),
        (12, IO_THREAD_PREFIX + "0"),
        (13, IO_THREAD_PREFIX + "1"),
    ):
        (tmp_path / str(tid)).mkdir()
        (tmp_path / str(tid) / "comm").write_text(comm + "\n")
    (tmp_path / "14").mkdir()  # a thread that ended between listing and reading: skipped
    assert io_thread_ids(tmp_path) == [12, 13]
    assert io_thread_ids(tmp_path / "missing") == []


def test_refused_policy_is_logged_not_fatal(monkeypatch, caplog):
    ctx = zmq.Context()
    try:

        def refuse(tid, policy, param):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "sched_setscheduler", refuse)
        monkeypatch.setattr(os, "sched_getscheduler", lambda tid: os.SCHED_OTHER)
        with caplog.at_level("WARNING", logger="broker.runtime.iosched"):
            assert batch_io_threads(ctx) == 0
        assert "could not put libzmq's I/O thread" in caplog.text
        sock = ctx.socket(zmq.PAIR)  # the context still works
        sock.close(linger=0)
    finally:
        ctx.term()


def test_config_knob(tmp_path):
    assert Config().zmq_io_batch is True
    path = tmp_path / "gripcast.toml"
    path.write_text("zmq_io_batch = false\n")
    assert load_config(str(path), env={}).zmq_io_batch is False
    assert load_config(None, env={"GRIPCAST_ZMQ_IO_BATCH": "false"}).zmq_io_batch is False
    path.write_text('zmq_io_batch = "sometimes"\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    assert "zmq_io_batch" in str(err.value)
