# cython: language_level=3, boundscheck=False, wraparound=False
"""The sequencer's usual item, compiled twin: see ``_sequence_py`` (same API, same results)."""

from cpython.dict cimport PyDict_Contains, PyDict_GetItem, PyDict_SetItem
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_SIZE
from cpython.object cimport PyObject

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)

DONE = 0
SLOW = 1
WAIT = 2


cdef inline tuple _pair(a, b):
    cdef tuple t = (a, b)
    PyObject_GC_UnTrack(<void*>t)  # as _fanout's atom_pair: a cached id's key stays untracked
    return t


cdef inline bint _later(object seen, double now) except -1:
    if type(seen) is float:
        return PyFloat_AS_DOUBLE(seen) > now
    return seen > now


def sequence_run(list items, Py_ssize_t start, dict pending, dict ids, dict ids_old,
                 Py_ssize_t gen_max, last_ids, Py_ssize_t last_ids_max, double now, double ttl,
                 expiry, list out):
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    cdef Py_ssize_t released = 0, duplicates = 0
    cdef bint remembered = False
    cdef PyObject* seen
    cdef object key, last
    move_to_end = last_ids.move_to_end
    for i in range(start, n):
        item = items[i]
        channel = item.channel
        item_id = item.id
        if item.no_seq or PyDict_Contains(pending, channel):
            return i, SLOW, released, duplicates, remembered
        if item_id is not None and ttl > 0:
            key = _pair(channel, item_id)
            seen = PyDict_GetItem(ids, key)
            if seen is NULL:
                seen = PyDict_GetItem(ids_old, key)
            if seen is not NULL and _later(<object>seen, now):
                duplicates += 1
                continue
            if len(ids) >= gen_max:
                return i, SLOW, released, duplicates, remembered
            PyDict_SetItem(ids, key, expiry)
            remembered = True
        prev_id = item.prev_id
        if prev_id is not None:
            last = last_ids.get(channel)
            if last is not None and last != prev_id:
                return i, WAIT, released, duplicates, remembered
        if item_id is None:
            last_ids.pop(channel, None)
        else:
            last_ids[channel] = item_id
            move_to_end(channel)
            if len(last_ids) > last_ids_max:
                last_ids.popitem(last=False)
        released += 1
        out.append(item)
    return n, DONE, released, duplicates, remembered
