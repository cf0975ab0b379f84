"""Stop signals that arrive once a process is already stopping.

``gripcast run`` children get SIGINT from the terminal (Ctrl-C goes to the whole process group)
and then SIGTERM from the runner.  trio's ``open_signal_receiver`` redelivers, when it closes,
the signals it received but nobody read; with Python's default disposition that second signal
kills a process that was exiting cleanly (``code=-15``).  Installing a harmless handler first
makes trio restore that handler instead, so a repeated stop signal is a no-op and the process
exits with its own status.  While trio's receiver is open, it alone handles the signals.

Python's own finalization then resets every signal that has a Python handler to the default
disposition, so a stop signal arriving while the interpreter shuts down would still kill the
process; ``ignore_stop_signals_for_exit`` (called once ``trio.run`` returned) sets them to
``SIG_IGN``, which finalization leaves alone.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum: int, frame: object) -> None:
    """A stop signal outside the receiver: the process is starting up or already stopping."""


def ignore_late_stop_signals() -> None:
    """Call from the main thread before ``trio.run``."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _ignore)


def ignore_stop_signals_for_exit() -> None:
    """Call from the main thread once ``trio.run`` returned: the process is exiting."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
