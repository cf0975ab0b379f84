"""Pushpin's stats socket (reference 6.1), fed by what the broker knows (sans-IO part).

Frames are ``<type> T<tnetstring map>``, one per event, so tools written against Pushpin
(``monitorstats.py``, ZMQ SUB with prefix ``"<type> "``) read them unchanged.  Every packet
has ``from`` (``gripcast-broker_<pid>``).  What the broker emits:

* ``sub``: a channel became live (``{"channel", "mode": "stream", "ttl": 60,
  "subscribers": 1}``: at least one edge subscribes to it; the broker sees edges, not
  clients, so ``subscribers`` is 1 and ``mode`` is always ``stream``) or dead
  (``{"channel", "unavailable": true}``); live channels are refreshed every report interval,
  as Pushpin refreshes before the ttl runs out;
* ``message``: each message fanned out to the edges, one packet per transport format
  (``{"channel", "item-id"?, "transport", "count": 1}``; ``count`` counts edges-level
  fan-outs, not clients);
* ``report``: every ``stats_report_interval_s``: ``{"received", "sent", "duration"}`` since the
  last report (publish items received, messages fanned out, milliseconds covered).

``conn`` events (client connections) live on the edges and are not sent (yet).
``StatsEncoder`` builds the frames; the broker sends them on a PUB socket it binds at
``stats_spec``.
"""
from __future__ import annotations

import os

from broker.tnetstring import dumps

SUB_TTL_S = 60
REFRESH_MAX = 10_000  # live channels refreshed per report, at most


def packet(kind: str, fields: dict) -> bytes:
    return kind.encode("ascii") + b" T" + dumps(fields)


class StatsEncoder:
    def __init__(self, source: str | None = None) -> None:
        self.source = source or f"gripcast-broker_{os.getpid()}"
        self._received = 0
        self._sent = 0
        self._last_report: float | None = None

    def sub(self, channel: str, live: bool) -> bytes:
        if live:
            return packet("sub", {"from": self.source, "channel": channel, "mode": "stream",
                                  "ttl": SUB_TTL_S, "subscribers": 1})
        return packet("sub", {"from": self.source, "channel": channel, "mode": "stream",
                              "unavailable": True})

    def messages(self, envelopes, live) -> list[bytes]:
        """``message`` packets for the envelopes fanned out (channel in ``live``)."""
        out = []
        for env in envelopes:
            if env.channel not in live:
                continue
            self._sent += 1
            for transport in env.formats:
                fields = {"from": self.source, "channel": env.channel, "transport": transport,
                          "count": 1}
                if env.id is not None:
                    fields["item-id"] = env.id
                out.append(packet("message", fields))
        return out

    def received(self, n: int) -> None:
        self._received += n

    def report(self, now: float, live) -> list[bytes]:
        """The periodic ``report`` plus ``sub`` refreshes of (up to REFRESH_MAX) live channels."""
        duration = 0 if self._last_report is None else int((now - self._last_report) * 1000)
        self._last_report = now
        out = [packet("report", {"from": self.source, "received": self._received,
                                 "sent": self._sent, "duration": duration})]
        self._received = self._sent = 0
        for i, channel in enumerate(live):
            if i >= REFRESH_MAX:
                break
            out.append(self.sub(channel, True))
        return out
