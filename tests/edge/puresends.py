"""The delivery path's sends through the pure twins: tests that give sessions pipes (the
compiled twins use send(2), which pipes refuse) call ``use_pure_sends(monkeypatch)``."""

from __future__ import annotations

import _speedups

_PURE = {
    "send_batch": ("sendmany", "send_batch"),
    "send_plain": ("deliver", "send_plain"),
    "send_pending": ("deliver", "send_pending"),
}


def use_pure_sends(monkeypatch) -> None:
    for name, (module, attr) in _PURE.items():
        monkeypatch.setattr(
            f"edge.sync.deliver.{name}", getattr(_speedups.twin(module, False), attr)
        )
