"""The one error tree of gripcast, split by whose fault it is (as h11 and httpcore do).

* ``ProtocolError``: someone broke a protocol; split by whose fault it is:
* ``RemoteProtocolError``: a peer (client, origin, publisher) sent something wrong.  It carries
  what to answer: an HTTP ``status`` and a one-line ``reason`` (and a WebSocket ``close_code``).
* ``LocalProtocolError``: our own misuse of an API; a bug.
* ``ConfigError``: the configuration is invalid; ``problems`` lists every problem at once.
* the rest (``StoreUnavailable``, ``CurveKeyError``, ``BrokerUnavailable``, ...) derive from
  ``GripcastError`` directly.  Every exception class of broker/, edge/ and gripcast/ is in this
  tree (``tests/test_error_tree.py`` walks the modules), including private control-flow signals.
"""

from __future__ import annotations

# Exit status of a process stopped by a configuration problem (sysexits.h EX_CONFIG): the
# runner does not restart such a child, and the systemd units list it in
# RestartPreventExitStatus, since restarting cannot fix a configuration.
EXIT_CONFIG = 78


class GripcastError(Exception):
    """Root of every error gripcast raises on purpose."""


class ProtocolError(GripcastError):
    """Someone broke a protocol: a peer (``RemoteProtocolError``) or we (``LocalProtocolError``)."""


class RemoteProtocolError(ProtocolError):
    def __init__(self, reason: str, status: int = 400, close_code: int = 1002) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.close_code = close_code


class PublishError(RemoteProtocolError):
    """A publish request or item is malformed; ``reason`` is Pushpin's message text."""


class InstructError(RemoteProtocolError):
    """An origin's GRIP instruction is invalid (answered 502 to the client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=502)


class LocalProtocolError(ProtocolError):
    """We misused one of our own APIs."""


class ConfigError(GripcastError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = list(problems)


class StoreUnavailable(GripcastError):
    """The history store cannot take writes right now (e.g. Redis is down)."""


class RateLimited(RemoteProtocolError):
    """A publisher exceeded a rate limit (``recover``, ``hint``): answered 429."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=429)
