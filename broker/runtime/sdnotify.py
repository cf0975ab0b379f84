"""systemd's readiness protocol (sd_notify), used by the broker and the edges.

When ``NOTIFY_SOCKET`` is set (systemd ``Type=notify`` units, the runner, the tests), a
process sends ``READY=1`` once its sockets are bound, ``RELOADING=1``/``STOPPING=1`` around
reloads and shutdown, and ``STATUS=...`` lines.  Without it these calls do nothing.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (e.g. "READY=1\\nSTATUS=listening") to the notify socket, if any."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True
