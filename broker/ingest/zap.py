"""The broker's ZAP authenticator: which Curve clients may connect (RFC 27).

libzmq asks a handler bound on ``inproc://zeromq.zap.01`` (the ``zap`` row of
``broker.config.WIRING``) about every Curve handshake; ``broker.curve.zap_reply`` decides, and
``ZapAuthenticator.handle`` runs it for a batch of requests on the broker's trio loop (no
thread).  Refused peers retry often, so each (address, key) is logged at most once a minute.
"""

from __future__ import annotations

import logging
import time

from broker import curve
from broker.runtime.zmqtrio import ZSocket

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0
LOGGED_MAX = 1000  # remembered (address, key) pairs before the memory is cleared


class ZapAuthenticator:
    def __init__(self, zsock: ZSocket, allowed: frozenset[bytes] | None) -> None:
        self.zsock = zsock
        self.allowed = allowed  # None: any client key with a valid handshake
        self.denied = 0
        self._logged: dict[tuple[str, str], float] = {}

    async def handle(self, batch: list[list[bytes]]) -> None:
        for frames in batch:
            try:
                i = frames.index(b"")
            except ValueError:
                continue
            d = curve.zap_reply(frames[i + 1 :], self.allowed)
            if not d.allowed:
                self.denied += 1
                now = time.monotonic()
                if now - self._logged.get((d.address, d.client_key), -1e9) >= LOG_EVERY_S:
                    if len(self._logged) > LOGGED_MAX:
                        self._logged.clear()
                    self._logged[(d.address, d.client_key)] = now
                    log.warning(
                        "curve handshake refused address=%s mechanism=%s "
                        "client_key=%s refused_total=%d",
                        d.address,
                        d.mechanism,
                        d.client_key,
                        self.denied,
                    )
            else:
                log.debug("curve client accepted address=%s client_key=%s", d.address, d.client_key)
            self.zsock.send(frames[: i + 1] + d.reply)

    async def serve(self) -> None:
        await self.zsock.serve(self.zsock.recv_batch, self.handle)
