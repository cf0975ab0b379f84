"""Identical next-link fetches share one origin request (Pushpin's auto-share).

``SharedFetches.fetch(key, open_)``: the first caller for ``key`` (``edge.grip.nextlink.share_key``)
opens the request (``open_()``, an ``OriginResponse``) and reads its head and up to
``SHARE_MAX_BYTES`` of body; callers with the same key arriving meanwhile wait and get the same
``Fetched`` answer (status, headers, body).  A body larger than that (or one that never ends:
a next link that streams) is not shared: the first caller gets it as a stream
(``Fetched.rest``) and the waiting ones are told to fetch on their own (``None``).  A failure
(``OriginError``) is every waiter's failure: each retries on its own schedule, as each Pushpin
session does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from edge.origin.client import OriginError

if TYPE_CHECKING:
    from edge.origin.client import OriginResponse

log = logging.getLogger(__name__)

SHARE_MAX_BYTES = 256 * 1024  # a next link's body shared in memory; a longer one streams


@dataclass(frozen=True, slots=True)
class Fetched:
    """One next link's answer: head, and its body (whole, or what was read plus ``rest``)."""

    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    subs: tuple[str, ...] = ()  # the answering target's implicit channels (``sub=``)
    rest: AsyncIterator[bytes] | None = None  # the body goes on here (the first caller only)
    resp: OriginResponse | None = None  # the response ``rest`` reads (closed by ``aclose``)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.body:
            yield self.body
        if self.rest is not None:
            async for piece in self.rest:
                yield piece

    async def aclose(self) -> None:
        if self.resp is not None:
            await self.resp.aclose()


class _Flight:
    __slots__ = ("done", "result", "error", "waiters")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Fetched | None = None
        self.error: OriginError | None = None
        self.waiters = 0


@dataclass(frozen=True, slots=True)
class FetchStatistics:
    fetches: int  # next-link fetches asked for
    requests: int  # origin requests they took
    shared: int  # fetches answered by another one's request
    in_flight: int


class SharedFetches:
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self._fetches = self._requests = self._shared = 0

    async def fetch(
        self, key: Hashable, open_: Callable[[], Awaitable[OriginResponse]]
    ) -> Fetched | None:
        """The answer for ``key``; None: another caller's answer could not be shared (fetch
        again, on your own: ``fetch_alone``).  Raises ``OriginError``."""
        self._fetches += 1
        flight = self._flights.get(key)
        if flight is not None:
            flight.waiters += 1
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.result is not None:
                self._shared += 1
            return flight.result
        flight = self._flights[key] = _Flight()
        try:
            fetched = await self._run(open_, shareable=True)
        except OriginError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
        flight.result = fetched if fetched.rest is None else None
        return fetched

    async def fetch_alone(self, open_: Callable[[], Awaitable[OriginResponse]]) -> Fetched:
        self._fetches += 1
        return await self._run(open_, shareable=False)

    async def _run(
        self, open_: Callable[[], Awaitable[OriginResponse]], *, shareable: bool
    ) -> Fetched:
        self._requests += 1
        resp = await open_()
        head = (resp.status, resp.reason, list(resp.headers))
        subs = tuple(resp.target.subs)
        if not 200 <= resp.status < 300:  # a failure: the same for every waiter
            await resp.aclose()
            return Fetched(*head, b"", subs)
        it = resp.body_chunks()
        if not shareable:
            return Fetched(*head, b"", subs, rest=it, resp=resp)
        parts: list[bytes] = []
        size = 0
        try:
            while size <= SHARE_MAX_BYTES:
                try:
                    piece = await it.__anext__()
                except StopAsyncIteration:
                    break
                parts.append(piece)
                size += len(piece)
            else:
                return Fetched(*head, b"".join(parts), subs, rest=it, resp=resp)
        except BaseException:
            await resp.aclose()
            raise
        await resp.aclose()
        return Fetched(*head, b"".join(parts), subs)

    def statistics(self) -> FetchStatistics:
        return FetchStatistics(self._fetches, self._requests, self._shared, len(self._flights))
