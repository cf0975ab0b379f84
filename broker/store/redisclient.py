"""A small trio Redis client over hiredis's ``Reader`` and ``pack_command`` (no redis-py).

This is the only module of gripcast that talks to Redis.

Theory of operation
-------------------

One TCP connection.  Every request (one command, or one pipeline of commands) holds a
``trio.Lock`` (trio's locks are fair, so requests are served FIFO) for its whole round trip:
it writes all its commands with one ``send_all`` and reads exactly as many replies as it sent
commands.  Replies come back as Python values (``bytes``, ``int``, ``list``, ``None``; hiredis
does no decoding).  An error reply is a ``hiredis.ReplyError`` value: ``execute`` raises it as
``RedisReplyError``; ``pipeline`` leaves it in place in its result list and the caller decides.

Whatever goes wrong during a round trip (connection refused, reset, EOF, a timeout, a protocol
error, or the caller being cancelled half way) drops the connection: a request whose replies
were not all read would leave the connection out of step.  The error is raised as
``RedisUnavailable`` (a ``broker.errors.StoreUnavailable``).  Commands are never retried here:
a command whose reply was lost may or may not have run, and only the caller knows whether it is
safe to run it again.

Reconnecting: the next request after a drop reconnects by itself, but at most once per backoff
period (which doubles on each failed attempt, from ``backoff_initial_s`` up to
``backoff_max_s``); inside that period requests fail fast with ``RedisUnavailable``.
``reconnect()`` reconnects now (dropping any current connection); ``wait_connected()`` retries
with that backoff until it succeeds or its own deadline passes.

Timeouts: ``connect_timeout_s`` bounds connecting (TCP + AUTH/SELECT), ``timeout_s`` bounds each
request's round trip.

The round trip itself goes through the stdlib socket under the trio stream
(``broker.runtime.rawsock.RawStream``: plain non-blocking calls, waiting with
``wait_readable`` only for the reply, where trio's stream would take a scheduling round after
the write and another after the read), and the lock is taken without a checkpoint when it is
free.

Following a master (Redis Sentinel, ``broker.store.sentinelclient``): a client made with a
``locator`` asks it for the address at each connect (instead of a fixed host and port) and
checks that the server found answers ``ROLE`` as a master.  An error reply ``-READONLY``,
``-LOADING`` or ``-MASTERDOWN`` (``broker.store.sentinel.needs_new_master``) drops the
connection after the request (the reply is still returned or raised as usual), and
``invalidate()`` (a ``+switch-master`` seen) makes the next request reconnect: either way the
next request locates the master again.  The request that saw the error is not retried here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import hiredis
import trio

from broker.errors import ConfigError, GripcastError, LocalProtocolError, StoreUnavailable
from broker.runtime.rawsock import RawStream, stdlib_socket
from broker.store.sentinel import SentinelReplyError, is_master_role, needs_new_master

log = logging.getLogger(__name__)

_NOT_ENOUGH = object()  # Reader.gets() returns it for "no complete reply yet"
_RECV_SIZE = 256 * 1024

Command = Sequence[Any]


class Locator(Protocol):
    """Where the master is now (``broker.store.sentinelclient.SentinelLocator``)."""

    async def locate(self) -> tuple[str, int]: ...


class RedisUnavailable(StoreUnavailable):
    """Redis cannot be reached (refused, reset, closed, timed out, or out of step)."""


class RedisReplyError(GripcastError):
    """Redis answered a command with an error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""

    def __init__(self, reply: hiredis.ReplyError) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.code = str(reply).split(" ", 1)[0]  # "ERR", "NOSCRIPT", "WRONGTYPE", ...


@dataclass(frozen=True, slots=True)
class RedisClientStatistics:
    connected: bool
    host: str
    port: int
    db: int
    connects: int
    connect_failures: int
    drops: int
    requests: int
    commands: int
    error_replies: int
    waiting: int  # requests queued behind the lock
    failover_drops: int  # connections dropped on READONLY/LOADING/MASTERDOWN or invalidate()
    role_refusals: int  # connects refused because the server found was not a master


def parse_redis_url(url: str) -> tuple[str, int, int, str | None]:
    """``redis://[:password@]host[:port][/db]`` -> ``(host, port, db, password)``."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError([f"store: invalid Redis URL {url!r} ({exc})"]) from exc
    problems = []
    if parts.scheme != "redis":
        problems.append(f"store: Redis URL must start with redis:// (got {url!r})")
    if not parts.hostname:
        problems.append(f"store: Redis URL has no host ({url!r})")
    path = parts.path.strip("/")
    db = 0
    if path:
        if not path.isdigit():
            problems.append(f"store: Redis URL database must be a number (got {path!r})")
        else:
            db = int(path)
    if problems or not parts.hostname:  # no host: a problem listed above
        raise ConfigError(problems)
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, db, password


class RedisClient:
    """One Redis connection; see the module docstring.  Make it with ``open_redis``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        *,
        password: str | None = None,
        timeout_s: float = 5.0,
        connect_timeout_s: float | None = None,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        client_name: str | None = None,
        locator: Locator | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._password = password
        self._client_name = client_name
        self._locator = locator
        self._stale = False  # invalidate(): reconnect before the next request
        self._failover_drops = 0
        self._role_refusals = 0
        self._stream: trio.SocketStream | None = None
        # the stdlib socket under it, for round trips (None: another trio, the stream's)
        self._raw: RawStream | None = None
        self._reader: hiredis.Reader | None = None
        self._lock = trio.Lock()
        self._closed = False
        self._backoff_s = 0.0
        self._next_attempt = float("-inf")  # trio.current_time() before which we fail fast
        self._connects = 0
        self._connect_failures = 0
        self._drops = 0
        self._requests = 0
        self._commands = 0
        self._error_replies = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def __aenter__(self) -> RedisClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; the client cannot be used afterwards."""
        self._closed = True
        stream, self._stream = self._stream, None
        self._reader = None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def reconnect(self) -> None:
        """Drop the current connection (if any) and connect now; raise RedisUnavailable."""
        self._check_open()
        async with self._lock:
            self._drop("reconnect requested")
            await self._connect()

    async def wait_connected(self, *, timeout_s: float | None = None) -> None:
        """Return once connected, reconnecting with backoff; RedisUnavailable after ``timeout_s``."""
        self._check_open()
        deadline = float("inf") if timeout_s is None else trio.current_time() + timeout_s
        last: RedisUnavailable | None = None
        while True:
            async with self._lock:
                if self._stream is not None:
                    return
                if trio.current_time() >= self._next_attempt:
                    try:
                        await self._connect()
                        return
                    except RedisUnavailable as exc:
                        last = exc
            wake = min(self._next_attempt, deadline)
            if trio.current_time() >= deadline:
                raise RedisUnavailable(
                    f"redis {self.host}:{self.port} unreachable: {last}"
                ) from last
            await trio.sleep_until(wake)

    def invalidate(self) -> None:
        """The master moved (``+switch-master``): reconnect (and locate) before the next request."""
        if self._stream is not None:
            self._stale = True

    # -- requests -----------------------------------------------------------------------------

    async def execute(self, *args: Any) -> Any:
        """Run one command; return its reply, raise RedisReplyError for an error reply."""
        (reply,) = await self._request([args])
        if isinstance(reply, hiredis.ReplyError):
            raise RedisReplyError(reply)
        return reply

    async def pipeline(self, commands: Iterable[Command]) -> list[Any]:
        """Send all ``commands`` in one write, return all replies (error replies in place)."""
        commands = list(commands)
        if not commands:
            return []
        return await self._request(commands)

    def statistics(self) -> RedisClientStatistics:
        return RedisClientStatistics(
            connected=self._stream is not None,
            host=self.host,
            port=self.port,
            db=self.db,
            connects=self._connects,
            connect_failures=self._connect_failures,
            drops=self._drops,
            requests=self._requests,
            commands=self._commands,
            error_replies=self._error_replies,
            waiting=self._lock.statistics().tasks_waiting,
            failover_drops=self._failover_drops,
            role_refusals=self._role_refusals,
        )

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("RedisClient is closed")

    async def _request(self, commands: list[Command]) -> list[Any]:
        self._check_open()
        try:
            data = b"".join([hiredis.pack_command(tuple(cmd)) for cmd in commands])
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"cannot encode Redis command: {exc}") from exc
        lock = self._lock
        if lock.locked():
            await lock.acquire()
        else:  # the usual case: no checkpoint (the round trip below waits for its reply)
            lock.acquire_nowait()
        try:
            if self._stale:
                self._failover_drops += 1
                self._drop("the master moved")
            if self._stream is None:
                if trio.current_time() < self._next_attempt:
                    raise RedisUnavailable(
                        f"redis {self.host}:{self.port} is down (retrying later)"
                    )
                await self._connect()
            self._requests += 1
            self._commands += len(commands)
            replies = await self._round_trip(data, len(commands), self.timeout_s)
            moved = None
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    self._error_replies += 1
                    if moved is None and needs_new_master(str(reply)):
                        moved = reply
            if moved is not None:
                self._failover_drops += 1
                log.warning(
                    "redis server is not a usable master host=%s port=%d reply=%s",
                    self.host,
                    self.port,
                    moved,
                )
                self._drop("not a usable master")
        finally:
            lock.release()
        return replies

    async def serve_subscription(
        self, channels: Sequence[str], on_message: Callable[[Any], None]
    ) -> None:
        """SUBSCRIBE to ``channels`` and call ``on_message`` with every push (a list such as
        ``[b"message", channel, payload]``) until the connection ends (RedisUnavailable).

        The client is in pub/sub mode afterwards: use a client of its own for this."""
        self._check_open()
        async with self._lock:
            if self._stream is None:
                await self._connect()
            stream, reader = self._stream, self._reader
            assert stream is not None and reader is not None
            try:
                subscribe: tuple[Any, ...] = ("SUBSCRIBE", *channels)
                await stream.send_all(hiredis.pack_command(subscribe))
                while True:
                    reply = reader.gets()
                    if reply is _NOT_ENOUGH:
                        chunk = await stream.receive_some(_RECV_SIZE)
                        if not chunk:
                            raise RedisUnavailable(
                                f"redis {self.host}:{self.port} closed the connection"
                            )
                        reader.feed(chunk)
                        continue
                    on_message(reply)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise RedisUnavailable(f"redis {self.host}:{self.port}: {exc}") from exc
            except hiredis.ProtocolError as exc:
                raise RedisUnavailable(
                    f"redis {self.host}:{self.port} protocol error: {exc}"
                ) from exc
            finally:
                self._drop("subscription ended")

    async def _round_trip(self, data: bytes, n: int, timeout_s: float) -> list[Any]:
        """Write ``data`` and read ``n`` replies; any failure (or cancellation) drops the link."""
        stream, reader = self._stream, self._reader
        assert stream is not None and reader is not None
        io: RawStream | trio.SocketStream = self._raw if self._raw is not None else stream
        done = False
        try:
            with trio.fail_after(timeout_s):
                await io.send_all(data)
                replies: list[Any] = []
                gets, feed = reader.gets, reader.feed
                while True:
                    reply = gets()
                    if reply is _NOT_ENOUGH:
                        chunk = await io.receive_some(_RECV_SIZE)
                        if not chunk:
                            raise RedisUnavailable(
                                f"redis {self.host}:{self.port} closed the connection"
                            )
                        feed(chunk)
                        continue
                    replies.append(reply)
                    if len(replies) == n:
                        break
            done = True
            return replies
        except trio.TooSlowError as exc:
            raise RedisUnavailable(
                f"redis {self.host}:{self.port} did not answer within {timeout_s}s"
            ) from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise RedisUnavailable(f"redis {self.host}:{self.port}: {exc}") from exc
        except hiredis.ProtocolError as exc:
            raise RedisUnavailable(f"redis {self.host}:{self.port} protocol error: {exc}") from exc
        finally:
            if not done:
                self._drop("request failed")

    async def _connect(self) -> None:
        """Open the connection (AUTH, SELECT, SETNAME); on failure set the backoff and raise."""
        self._drop("connecting")
        self._stale = False
        stream = None
        ok = False
        try:
            if self._locator is not None:
                self.host, self.port = await self._locator.locate()
            with trio.fail_after(self.connect_timeout_s):
                stream = await trio.open_tcp_stream(self.host, self.port)
            self._stream = stream
            sock = stdlib_socket(stream.socket)
            self._raw = RawStream(sock) if sock is not None else None
            self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
            setup: list[Command] = []
            if self._password is not None:
                setup.append(("AUTH", self._password))
            if self.db:
                setup.append(("SELECT", self.db))
            if self._client_name:
                setup.append(("CLIENT", "SETNAME", self._client_name))
            if self._locator is not None:
                setup.append(("ROLE",))
            if setup:
                data = b"".join(hiredis.pack_command(tuple(c)) for c in setup)
                replies = await self._round_trip(data, len(setup), self.connect_timeout_s)
                for reply in replies:
                    if isinstance(reply, hiredis.ReplyError):
                        raise RedisUnavailable(
                            f"redis {self.host}:{self.port} setup failed: {reply}"
                        )
                if self._locator is not None:
                    try:
                        master = is_master_role(replies[-1])
                    except SentinelReplyError as exc:
                        raise RedisUnavailable(f"redis {self.host}:{self.port}: {exc}") from exc
                    if not master:
                        self._role_refusals += 1
                        raise RedisUnavailable(
                            f"redis {self.host}:{self.port} is not a master (ROLE); "
                            "a failover is under way"
                        )
            ok = True
        except trio.TooSlowError as exc:
            raise RedisUnavailable(
                f"redis {self.host}:{self.port}: connect timed out after {self.connect_timeout_s}s"
            ) from exc
        except OSError as exc:
            raise RedisUnavailable(f"redis {self.host}:{self.port}: {exc}") from exc
        finally:
            if ok:
                self._connects += 1
                self._backoff_s = 0.0
                self._next_attempt = float("-inf")
                log.info("redis connected host=%s port=%d db=%d", self.host, self.port, self.db)
            else:
                self._drop("connect failed")
                if stream is not None:
                    stream.socket.close()  # idempotent: _drop may have closed it already
                self._connect_failures += 1
                self._backoff_s = min(
                    self.backoff_max_s, max(self.backoff_initial_s, self._backoff_s * 2)
                )
                self._next_attempt = trio.current_time() + self._backoff_s

    def _drop(self, why: str) -> None:
        stream, self._stream = self._stream, None
        self._raw = None
        self._reader = None
        if stream is not None:
            self._drops += 1
            log.debug("redis connection dropped host=%s port=%d why=%s", self.host, self.port, why)
            # Closing the socket is synchronous and cannot block; the stream is unusable anyway.
            stream.socket.close()


async def open_redis(
    host: str = "127.0.0.1",
    port: int = 6379,
    db: int = 0,
    *,
    timeout_s: float = 5.0,
    **kwargs: Any,
) -> RedisClient:
    """Connect and return a ``RedisClient`` (an async context manager); raise RedisUnavailable."""
    client = RedisClient(host, port, db, timeout_s=timeout_s, **kwargs)
    await client._connect()
    return client


async def open_redis_url(url: str, *, timeout_s: float = 5.0, **kwargs: Any) -> RedisClient:
    """``open_redis`` for a ``redis://[:password@]host[:port][/db]`` URL."""
    host, port, db, password = parse_redis_url(url)
    return await open_redis(host, port, db, timeout_s=timeout_s, password=password, **kwargs)
