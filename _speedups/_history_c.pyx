# cython: language_level=3
"""The broker's in-memory history: a channel's state and the batch append (compiled twin of
``_history_py``, which documents the behaviour).  A channel's numbers are C fields here, so the
append loop touches one object per channel run and no Python integer per counter.

A channel and its ring are also out of the cyclic garbage collector's lists (as ``retain``
takes the envelopes out): a channel holds strings, numbers, the ring of envelopes and a dict
of ids, none of which can refer back to it, so it can never be part of a cycle and
refcounting frees it.  A full collection no longer visits every retained message through the
rings (at 10,000 channels and ~1,000,000 retained messages: 65 -> 30 ms a full collection in
the broker, 40 -> 2 ms for the history alone; bench/RESULTS.md, seventeenth session).  The pure twin cannot untrack an object: the
same behaviour, the collector's work aside."""

cimport cython
from collections import deque

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)

from _speedups._fanout_c import make_envelope, retain
from _speedups._items_c import payload_bytes


@cython.no_gc
cdef class HistoryChannel:
    cdef public str name
    cdef public str epoch
    cdef public long long last_seq
    cdef public object last_id
    cdef public object ring
    cdef public dict ids
    cdef public long long bytes
    cdef public long long max_items
    cdef public double max_age_s

    def __init__(self, str name, str epoch, long long max_items, double max_age_s):
        self.name = name
        self.epoch = epoch
        self.max_items = max_items
        self.max_age_s = max_age_s
        self.last_seq = 0
        self.last_id = None
        self.ring = deque()
        PyObject_GC_UnTrack(<void*>self.ring)  # (a deque is never tracked again by appends)
        self.ids = {}
        self.bytes = 0

    def drop_oldest(self):
        """Drop the oldest retained message; its payload bytes."""
        env = self.ring.popleft()
        cdef long long n = payload_bytes(env.formats)
        self.bytes -= n
        if env.id is not None and self.ids.get(env.id) == env.seq:
            del self.ids[env.id]
        return n


def append_many(history, items, double now, envelope):
    cdef list out = []
    channels = history._channels
    move_to_end = channels.move_to_end
    get = channels.get
    cdef double max_bytes = history.max_bytes
    cdef object cur_name = None
    cdef HistoryChannel ch = None
    cdef object ring = None
    cdef dict ids = None
    cdef long long max_items = 0
    cdef bint first = False
    cdef set expired_checked = set()
    cdef long long retained = 0, payload = 0, seq, n
    cdef object now_obj = now
    for item in items:
        name = item.channel
        if name != cur_name:
            found = get(name)
            ch = found if found is not None else history._channel(name)
            move_to_end(name)
            cur_name = name
            ring = ch.ring
            ids = ch.ids
            max_items = ch.max_items
            first = name not in expired_checked
        seq = ch.last_seq + 1
        ch.last_seq = seq
        item_id = item.id
        ch.last_id = item_id
        formats = item.formats
        env = make_envelope(
            envelope, ch.name, seq, ch.epoch, formats, item_id, item.prev_id, item.meta, now_obj
        )
        ring.append(env)
        retain(env)
        if item_id is not None:
            ids[item_id] = seq
        retained += 1
        n = payload_bytes(formats)
        ch.bytes += n
        payload += n
        while len(ring) > max_items or (ch.bytes > max_bytes and len(ring) > 1):
            old = ring.popleft()
            n = payload_bytes(old.formats)
            ch.bytes -= n
            payload -= n
            old_id = old.id
            if old_id is not None and ids.get(old_id) == old.seq:
                del ids[old_id]
            retained -= 1
        if first:
            first = False
            expired_checked.add(name)
            if ring[0].ts < now - ch.max_age_s:
                history._expire(ch, now_obj)
        out.append(env)
    history._retained += retained
    history._payload += payload
    history._appended += len(out)
    history._check_total()
    return out
