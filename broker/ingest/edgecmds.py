"""Commands the edges answer (``conncheck``, ``refresh``), broker side, sans-IO.

Pushpin's handler asks its proxy, which holds the client connections; here the edges hold them,
so the broker relays the command to every edge and answers the requester from their answers
(the contract is in ``broker.wire``).  Theory of operation:

* the live edges are the presence topics the broker's XPUB saw subscribed and not yet
  unsubscribed (``on_notice``; libzmq unsubscribes a disconnected SUB's topics);
* ``start`` numbers a command, records which edges must answer (those live now) and returns the
  frame to publish on ``COMMAND_TOPIC``;
* ``on_answer`` adds an edge's findings; ``on_notice`` of an edge going away counts it as
  answered (it holds no connection any more);
* a command is *settled* when every edge it waits for answered, or earlier when the answer is
  already known (every id of a conncheck found, the cid of a refresh found);
* settled commands are handed back to the caller (the I/O side, ``broker.ingest.relay``), which
  answers them; one that is not settled in time is ``finish``-ed unsettled (the reply then says
  ``proxy-request-failed``, ``broker.ingest.commands.relay_reply``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from broker.wire import (
    CommandAnswer,
    ConnCheckCommand,
    EdgeCommand,
    encode_command,
)


@dataclass(slots=True)
class Pending:
    """One relayed command: who must still answer, what was found, whom to answer."""

    command: EdgeCommand
    prefix: list[bytes]  # the requester's routing envelope on the command socket
    rid: bytes | None
    waiting: set[str]
    found: set[str] = field(default_factory=set)

    @property
    def cmd(self) -> int:
        return self.command.cmd

    @property
    def settled(self) -> bool:
        if not self.waiting:
            return True
        c = self.command
        if isinstance(c, ConnCheckCommand):
            return self.found.issuperset(c.ids)
        return c.cid is not None and c.cid in self.found


@dataclass(frozen=True, slots=True)
class EdgeCommandsStatistics:
    edges: int
    pending: int
    started: int
    settled: int
    timed_out: int


class EdgeCommands:
    def __init__(self) -> None:
        self.edges: set[str] = set()
        self._pending: dict[int, Pending] = {}
        self._numbers = itertools.count(1)
        self._started = self._settled = self._timed_out = 0

    def on_notice(self, subscribed: bool, edge: str) -> list[Pending]:
        """An edge's presence topic was (un)subscribed; returns the commands now settled."""
        if subscribed:
            self.edges.add(edge)
            return []
        self.edges.discard(edge)
        out = []
        for p in list(self._pending.values()):
            if edge in p.waiting:
                p.waiting.discard(edge)
                if p.settled:
                    out.append(self._settle(p))
        return out

    def start(
        self, command: EdgeCommand, prefix: list[bytes], rid: bytes | None
    ) -> tuple[Pending, bytes | None]:
        """Number ``command`` and wait for the live edges: ``(pending, frame to publish)``;
        the frame is None when the command is settled already (no edge is live)."""
        p = Pending(replace(command, cmd=next(self._numbers)), list(prefix), rid, set(self.edges))
        self._started += 1
        if p.settled:
            self._settled += 1
            return p, None
        self._pending[p.cmd] = p
        return p, encode_command(p.command)

    def on_answer(self, answer: CommandAnswer) -> Pending | None:
        """An edge's answer; returns the command if it is now settled (None: not yet, or an
        answer to a command already answered)."""
        p = self._pending.get(answer.cmd)
        if p is None:
            return None
        p.waiting.discard(answer.edge)
        p.found.update(answer.found)
        return self._settle(p) if p.settled else None

    def finish(self, cmd: int) -> Pending | None:
        """Give up waiting for ``cmd`` (its time is up): the command, unsettled, or None when
        it was settled already."""
        p = self._pending.pop(cmd, None)
        if p is not None:
            self._timed_out += 1
        return p

    def _settle(self, p: Pending) -> Pending:
        del self._pending[p.cmd]
        self._settled += 1
        return p

    def statistics(self) -> EdgeCommandsStatistics:
        return EdgeCommandsStatistics(
            len(self.edges), len(self._pending), self._started, self._settled, self._timed_out
        )
