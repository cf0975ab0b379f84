# cython: language_level=3
"""Send to many non-blocking sockets in one loop (compiled twin of ``_sendmany_py``).

Same contract as the pure twin: one int per socket, bytes written (0 = would block) or -errno.
Uses send(2) with MSG_DONTWAIT | MSG_NOSIGNAL, so a vanished peer never raises SIGPIPE.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport errno, EAGAIN, EINTR

cdef extern from "sys/socket.h" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL


def send_batch(list fds, list datas):
    cdef Py_ssize_t i, count = min(len(fds), len(datas))
    cdef list out = [0] * count
    cdef bytes data
    cdef int fd
    cdef ssize_t r
    for i in range(count):
        fd = fds[i]
        data = datas[i]
        r = send(fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), MSG_DONTWAIT | MSG_NOSIGNAL)
        if r < 0:
            if errno == EAGAIN or errno == EINTR:
                r = 0
            else:
                r = -errno
        out[i] = r
    return out
