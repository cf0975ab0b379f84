"""Send to many non-blocking sockets in one loop (pure-Python twin of ``_sendmany_c``).

``send_batch(fds, datas)`` writes ``datas[i]`` to file descriptor ``fds[i]`` without blocking
and returns one int per socket: the number of bytes written (0 when the socket would block,
possibly fewer than ``len(datas[i])``), or ``-errno`` when the write failed (peer gone).
"""

from __future__ import annotations

import os

_write = os.write


def send_batch(fds: list[int], datas: list[bytes]) -> list[int]:
    out: list[int] = []
    append = out.append
    for fd, data in zip(fds, datas):
        try:
            append(_write(fd, data))
        except BlockingIOError:
            append(0)
        except InterruptedError:
            append(0)
        except OSError as exc:
            append(-(exc.errno or 1))
    return out
