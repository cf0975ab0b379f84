"""New plain-HTTP client connections served without a trio task each, until they need one.

Theory of operation
-------------------
A new held stream costs the edge one trio task: its spawn (a ``Task``, a ``Context`` copy, the
nursery's bookkeeping), one wait for the origin's answer (trio's ``wait_readable``: its
registration, the scheduler's wake-up and reschedule) and the task's exit once the stream
parks (``edge.parking``).  Under ``python -m bench connrate`` that was ~15% of the edge's CPU
per connection (bench/RESULTS.md, "Twenty-second session").

So one task per edge, the *opener* (``Opener.serve``), accepts the plain-HTTP listeners'
connections and runs each connection's coroutine (``Edge._serve_connection``) itself, by hand
(``coro.send``), as far as it goes without a trio wait.  The waits a usual connection makes,
for the origin's response head (``edge.origin.client``), for its request when it was not in
yet at the accept (``Connection.next_request``) and for a new origin connection to an IP
address (``connect_first``), go through ``wait_readable`` / ``wait_writable`` below: while the
opener drives, they yield a marker instead of trio's trap, and the opener registers the
socket with its own ``epoll`` (one-shot) and resumes the coroutine when the socket is ready.
The opener waits on that epoll with one trio ``wait_readable`` for all of them.  The first
subscriber of a channel new to the edge waits for the broker's position of the channel on a
``Gate`` (``Edge.wait_positioned``): parked with the opener, resumed when the position comes
(or at the wait's coarse deadline).  A stream hold that parks then ends its coroutine, and
the connection never had a task.

Anything else a connection awaits (a write that did not fit, a WebSocket, a retry, a long-poll,
any cancel scope left open over the wait) is a real trio trap,
made while the opener's task was the current task: the opener then *donates itself* to that
connection.  It starts a new opener task (which takes over the epoll, the listeners and the
connections in progress) and goes on as the connection's task, passing the trap to trio and
the result back (``_forward``).  Nothing is bound to the wrong task: the trap was made by
this task and its result comes back to this task.  A connection that needs trio therefore
pays one task spawn, as every connection did before.

Parked connections woken (``edge.parking``) come here too: the parker's ``spawn`` is
``Opener.start_soon``, so a held stream whose client left ends without a task as well (an
eventfd wakes the opener when it waits in trio).

Writes leave together (``cork``): on this VM a write that wakes a peer sleeping in
``epoll_wait`` costs the writer ~8 us (the wake-up's inter-processor interrupt), a third of
the edge's system time a connection, and the origin and the clients slept again after
nearly every request and stream head.  So a driven connection about to send its origin
request, or its stream head to the client, yields ``_CORK``: the opener goes on with its other
ready coroutines first, and runs the corked ones once none is left (or ``CORK_MAX`` wait), so
a batch of connections' writes leaves back to back and wakes each peer once.  A connection
waits at most ``CORK_MAX`` others' steps; alone, it waits for nothing.

Timeouts: ``edge.readtimer`` ends an overdue wait with ``notify_closing`` (below), which also
finds a wait parked here and resumes it with ``trio.ClosedResourceError``, as trio does.  When
the edge stops (its nursery is cancelled), every connection still in the opener's hands gets
a task of its own, resumed in the cancelled nursery: it ends as a task cancelled at its wait
would.

Only coroutines that await nothing but ``wait_readable`` here or trio's own traps may be
driven; ``Edge._serve_connection`` is one.  A driven coroutine runs in the opener task's
``contextvars`` context (nothing on the request path sets a context variable).  The edge's
``/metrics`` count what the opener started (``gripcast_edge_opened_without_task_total``)
and the tasks it gave away (``gripcast_edge_opener_donations_total``; a debug log names
where each such connection waits).  TLS listeners keep ``edge.fastpath.accept_loop`` (a
handshake is many waits).
"""

from __future__ import annotations

import logging
import os
import select
import types
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any

import trio

from broker.runtime.rawsock import ACCEPT_PAUSE_S, accept_failed, plain_accept

log = logging.getLogger(__name__)

ACCEPT_BATCH = 256
MAX_EVENTS = 1024
# corked coroutines (``cork``) go on, at the latest, once this many wait: their writes leave
# together, and none waits for more than this many others' steps
CORK_MAX = 32

Driven = Coroutine[Any, Any, Any]


class _WaitRead:
    """What a driven coroutine yields to wait for ``fd`` to become readable (``events``: or
    writable, ``_WaitWrite``)."""

    __slots__ = ("fd",)
    events = select.EPOLLIN | select.EPOLLONESHOT
    new = False  # the fd is likely not in the opener's epoll yet: added first, not modified

    def __init__(self, fd: int) -> None:
        self.fd = fd


class _WaitWrite(_WaitRead):
    __slots__ = ()
    events = select.EPOLLOUT | select.EPOLLONESHOT


class _WaitReadNew(_WaitRead):
    """A first wait on a fresh socket (a client's first bytes, a connect): added to the epoll
    first, not modified first (one system call, not two)."""

    __slots__ = ()
    new = True


class _WaitWriteNew(_WaitWrite):
    __slots__ = ()
    new = True


class _WaitGate:
    """What a driven coroutine yields to wait for ``gate`` to be set."""

    __slots__ = ("gate",)

    def __init__(self, gate: Gate) -> None:
        self.gate = gate


class Gate:
    """A one-shot event for coroutines an opener runs and for tasks alike: ``wait()`` parks a
    driven coroutine with its opener (no task; resumed when ``set``) and waits on a
    ``trio.Event`` in a task (where a cancel scope may bound it)."""

    __slots__ = ("is_set", "_event", "_parked")

    def __init__(self) -> None:
        self.is_set = False
        self._event: trio.Event | None = None
        self._parked: list[tuple[Opener, Driven]] = []

    def set(self) -> None:
        if self.is_set:
            return
        self.is_set = True
        if self._event is not None:
            self._event.set()
        parked, self._parked = self._parked, []
        for op, coro in parked:
            op.resume(coro)

    @types.coroutine
    def wait(self) -> Generator[Any, Any, None]:
        if self.is_set:
            return
        if _DRIVING.on:
            yield _WaitGate(self)
        else:
            if self._event is None:
                self._event = trio.Event()
            yield from self._event.wait().__await__()


class _Cork:
    """What a driven coroutine yields to go on only once the opener ran every other ready
    coroutine (``cork``)."""

    __slots__ = ()


_CORK = _Cork()


@types.coroutine
def cork() -> Generator[Any, Any, None]:
    """In a coroutine an opener drives: go on after the other ready ones (their writes to the
    origin then leave together, one wake-up of the origin for the lot); alone (nothing else
    ready or corked), or elsewhere, nothing."""
    d = _DRIVING
    if d.on and (d.ready or d.corked):
        yield _CORK


class _Driving:
    on = False  # an opener is running a coroutine step (synchronous: never nested)
    # the driving opener's ready and corked coroutines (set at each round of its loop)
    ready: deque[tuple[Driven, BaseException | None]] = deque()
    corked: list[Driven] = []


_DRIVING = _Driving()
_OPENERS: weakref.WeakSet[Opener] = weakref.WeakSet()


def driving() -> bool:
    """True in a coroutine an opener runs (its waits can be ``wait_readable`` here)."""
    return _DRIVING.on


@types.coroutine
def wait_readable(sock: Any, new: bool = False) -> Generator[Any, Any, None]:
    """``trio.lowlevel.wait_readable(sock)``, or, in a coroutine the opener drives, the same
    wait in the opener's epoll.  ``trio.ClosedResourceError`` if ``notify_closing(sock)``.
    ``new``: the first wait on ``sock`` (its registration is tried first)."""
    if _DRIVING.on:
        yield _WaitReadNew(sock.fileno()) if new else _WaitRead(sock.fileno())
    else:
        yield from trio.lowlevel.wait_readable(sock).__await__()


@types.coroutine
def wait_writable(sock: Any, new: bool = False) -> Generator[Any, Any, None]:
    """``wait_readable``'s twin for writability (a connect in progress)."""
    if _DRIVING.on:
        yield _WaitWriteNew(sock.fileno()) if new else _WaitWrite(sock.fileno())
    else:
        yield from trio.lowlevel.wait_writable(sock).__await__()


def notify_closing(sock: Any) -> None:
    """``trio.lowlevel.notify_closing(sock)`` for waits in trio and in the openers alike."""
    fd = sock.fileno()
    for op in list(_OPENERS):
        op.closing(fd)
    trio.lowlevel.notify_closing(sock)


class Opener:
    """One per edge: its plain-HTTP listeners' connections, driven until they park, end, or
    need a task.  ``on_accept(sock, addr)`` returns the coroutine that serves a connection
    (``sock`` a trio socket), or None when it dealt with it itself (a refusal)."""

    def __init__(
        self,
        listeners: Iterable[Any],
        on_accept: Callable[[trio.socket.SocketType, Any], Driven | None],
        spawn: Callable[..., Any],
    ) -> None:
        self._listeners: dict[int, Callable[[], tuple[Any, Any]]] = {}
        self._on_accept = on_accept
        self._spawn = spawn  # spawn(async_fn, *args, name=...) in the edge's nursery
        self._ep = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake_fd, select.EPOLLIN)
        # fd -> the coroutine waiting for it, and its marker (what it waits for)
        self._waiting: dict[int, tuple[Driven, _WaitRead]] = {}
        self._ready: deque[tuple[Driven, BaseException | None]] = deque()  # to run, in order
        self._gated: dict[Driven, Gate] = {}  # coroutines parked on a Gate (Gate.wait)
        self._corked: list[Driven] = []  # to run once ``_ready`` is empty (``cork``)
        self._idle = False  # the opener waits in trio: what is queued needs a poke
        self._poked = False  # ... and it was poked (the eventfd holds a count)
        self._closed = False
        self.driven = self.donated = 0  # connections started here; tasks given away
        _OPENERS.add(self)
        self.listen(listeners)

    def listen(self, listeners: Iterable[Any]) -> None:
        """Accept on these listening stdlib sockets (non-blocking) too."""
        for ls in listeners:
            fd = ls.fileno()
            self._listeners[fd] = plain_accept(ls)
            self._ep.register(fd, select.EPOLLIN)

    def start_soon(self, async_fn: Callable[..., Driven], *args: Any, name: object = None) -> None:
        """``nursery.start_soon``'s form (``edge.parking`` wakes with it): run
        ``async_fn(*args)`` here, driven as a new connection is (a task once it needs one);
        in a task of its own once the opener has stopped."""
        if self._closed:
            self._spawn(async_fn, *args, name=name)
            return
        self._ready.append((async_fn(*args), None))
        self._poke()

    def resume(self, coro: Driven) -> None:
        """Run ``coro``, parked on a ``Gate`` that was set, again (in a task once the opener
        has stopped: ``_abandon`` gave it one already)."""
        if self._gated.pop(coro, None) is None:
            return
        self._ready.append((coro, None))
        self._poke()

    def _poke(self) -> None:
        if self._idle and not self._poked:
            self._poked = True
            os.eventfd_write(self._wake_fd, 1)

    def stop_accepting(self) -> None:
        """Leave the listeners alone from now on (the drain closes them)."""
        for fd in self._listeners:
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):  # (closed already, paused, or the epoll closed)
                pass
        self._listeners = {}

    def closing(self, fd: int) -> None:
        """A wait on ``fd`` here ends with ``trio.ClosedResourceError`` (``notify_closing``)."""
        held = self._waiting.pop(fd, None)
        if held is None:
            return
        coro = held[0]
        try:  # out of the epoll: a later event must not resume it twice (and with no events
            self._ep.unregister(fd)  # asked for, a hang-up would still be reported: a spin)
        except (OSError, ValueError):
            pass
        self._ready.append((coro, trio.ClosedResourceError("another task closed this socket")))
        self._poke()

    async def serve(self) -> None:
        """Run in the edge's nursery (a new opener task takes over after each donation)."""
        await self._serve()

    @types.coroutine
    def _serve(self) -> Generator[Any, Any, None]:
        task = trio.lowlevel.current_task()
        base = task._cancel_status  # no cancel scope of a driven connection may stay open
        ep, waiting, ready, corked = self._ep, self._waiting, self._ready, self._corked
        epfd, wake_fd, driving = ep.fileno(), self._wake_fd, _DRIVING
        handover = False
        try:
            while True:
                driving.ready, driving.corked = ready, corked  # (another opener ran meanwhile)
                while ready:
                    coro, exc = ready.popleft()
                    driving.on = True
                    try:
                        y = coro.send(None) if exc is None else coro.throw(exc)
                    except StopIteration:
                        continue
                    finally:
                        driving.on = False
                    if isinstance(y, _WaitRead) and task._cancel_status is base:
                        fd = y.fd
                        if fd in waiting:  # (as trio refuses a second waiter on one fd)
                            busy = trio.BusyResourceError("another coroutine waits on this fd")
                            ready.append((coro, busy))
                            continue
                        try:
                            if y.new:
                                try:
                                    ep.register(fd, y.events)
                                except FileExistsError:
                                    ep.modify(fd, y.events)
                            else:
                                try:
                                    ep.modify(fd, y.events)
                                except FileNotFoundError:
                                    ep.register(fd, y.events)
                        except OSError as err:  # (a closed fd: raised where it waited)
                            ready.append((coro, err))
                            continue
                        waiting[fd] = (coro, y)
                        continue
                    if y is _CORK:
                        if task._cancel_status is not base:
                            # (a scope of its own is open: nothing else may run now)
                            ready.appendleft((coro, None))
                        elif len(corked) < CORK_MAX:
                            corked.append(coro)
                        else:  # the lot goes now (each waited at most CORK_MAX others)
                            corked.append(coro)
                            ready.extendleft([(c, None) for c in reversed(corked)])
                            corked.clear()
                        continue
                    if type(y) is _WaitGate and task._cancel_status is base:
                        gate = y.gate
                        if gate.is_set:
                            ready.append((coro, None))
                        else:
                            self._gated[coro] = gate
                            gate._parked.append((self, coro))
                        continue
                    # a trio trap (or a wait under a cancel scope): this task is the
                    # connection's from now on; a new opener takes over the rest
                    self.donated += 1
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("opener: a task for the connection waiting at %s", _where(coro))
                    handover = True
                    self._spawn(self.serve, name="opener")
                    yield from _forward(coro, y)
                    return
                if corked:
                    ready.extend([(c, None) for c in corked])
                    corked.clear()
                    continue
                self._idle = True
                try:
                    yield from trio.lowlevel.wait_readable(epfd).__await__()
                finally:
                    self._idle = False
                for fd, _ in ep.poll(0, MAX_EVENTS):
                    woken = waiting.pop(fd, None)
                    if woken is not None:
                        ready.append((woken[0], None))
                    elif fd in self._listeners:
                        if not self._accept(fd):
                            ep.unregister(fd)  # out of descriptors: a pause, then again
                            self._spawn(self._resume_accept, fd, name="opener-pause")
                    elif fd == wake_fd:
                        os.eventfd_read(wake_fd)
                        self._poked = False
        finally:
            if not handover:
                self._abandon()

    def _accept(self, fd: int) -> bool:
        """Accept up to ``ACCEPT_BATCH`` connections on listener ``fd``; False when out of
        descriptors or memory (logged: the caller pauses that listener)."""
        accept, on_accept, ready = self._listeners[fd], self._on_accept, self._ready
        from_stdlib = trio.socket.from_stdlib_socket
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if accept_failed(exc, "edge"):
                    continue
                return False
            coro = on_accept(from_stdlib(sock), addr)
            if coro is not None:
                self.driven += 1
                ready.append((coro, None))
        return True

    async def _resume_accept(self, fd: int) -> None:
        await trio.sleep(ACCEPT_PAUSE_S)
        if not self._closed and fd in self._listeners:
            self._ep.register(fd, select.EPOLLIN)

    def _abandon(self) -> None:
        """The opener ends (the edge stops): every connection it holds gets a task."""
        self._closed = True
        _OPENERS.discard(self)
        for coro, exc in self._ready:
            self._spawn(run_task, coro, None, exc, name="client")
        for coro in self._corked:
            self._spawn(run_task, coro, None, name="client")
        self._corked.clear()
        for coro, marker in self._waiting.values():
            self._spawn(run_task, coro, marker, name="client")
        for coro, gate in self._gated.items():
            gate._parked = [(op, c) for op, c in gate._parked if c is not coro]
            self._spawn(run_task, coro, _WaitGate(gate), name="client")
        self._ready.clear()
        self._waiting.clear()
        self._gated.clear()
        self._ep.close()
        os.close(self._wake_fd)

    def statistics(self) -> tuple[int, int]:
        return self.driven, self.donated


def _where(coro: Any) -> str:
    """Where a suspended coroutine chain waits: its innermost frames outside trio, as
    ``function (file:line)`` from the outside in (debug logs)."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None and "/trio/" not in frame.f_code.co_filename:
            code = frame.f_code
            frames.append(
                f"{code.co_name} ({code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno})"
            )
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(frames[-3:]) or "?"


async def run_task(coro: Driven, y: Any = None, exc: BaseException | None = None) -> None:
    """Go on with ``coro`` in this task: from the trap or marker ``y`` it yielded, or (None)
    from where it stands (not started, or to be resumed with ``exc``)."""
    await _forward(coro, y, exc)


@types.coroutine
def _forward(coro: Driven, y: Any, exc: BaseException | None = None) -> Generator[Any, Any, None]:
    """Run ``coro`` in the current task from the trap ``y`` it yielded (trio's, passed on;
    an opener's marker, waited for in trio; None: resume it now, with ``exc`` if given)."""
    while True:
        value: Any = None
        if isinstance(y, _WaitRead):
            wait = (
                trio.lowlevel.wait_writable
                if y.events & select.EPOLLOUT
                else trio.lowlevel.wait_readable
            )
            try:
                yield from wait(y.fd).__await__()
            except BaseException as e:  # (Cancelled included: the coroutine handles it)
                exc = e
        elif y is _CORK:
            pass
        elif type(y) is _WaitGate:
            try:
                yield from y.gate.wait()
            except BaseException as e:
                exc = e
        elif y is not None:
            try:
                value = yield y
            except BaseException as e:
                exc = e
        try:
            y = coro.send(value) if exc is None else coro.throw(exc)
        except StopIteration:
            return
        exc = None
