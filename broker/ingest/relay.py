"""Relays ``conncheck`` and ``refresh`` to the edges and answers the requester: the I/O side of
``broker.ingest.edgecmds``.

``submit`` publishes the command on the edge fan-out socket (``wire.COMMAND_TOPIC``) and starts
one task that waits, at most ``COMMAND_TIMEOUT_S``, until the command is settled (every live
edge answered, or the answer is known); then the reply goes out on the command socket.  The
pipeline hands over the edges' presence notices (``on_notice``) and answers (``on_answer``).
"""

from __future__ import annotations

import logging

import trio

from broker.ingest import commands
from broker.ingest.edgecmds import EdgeCommands, EdgeCommandsStatistics, Pending
from broker.runtime.zmqtrio import ZSocket
from broker.wire import CommandAnswer

log = logging.getLogger(__name__)

# an edge answers from memory in a few milliseconds; one that has not answered by then is
# stuck, and the requester gets ``proxy-request-failed`` rather than an incomplete answer
COMMAND_TIMEOUT_S = 3.0


class EdgeRelay:
    def __init__(self, edge_pub: ZSocket, command: ZSocket) -> None:
        self.edge_pub = edge_pub
        self.command = command
        self.state = EdgeCommands()
        self.timeout_s = COMMAND_TIMEOUT_S
        self._events: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the waiting tasks (until cancelled)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def submit(self, prefix: list[bytes], result: commands.CommandResult) -> None:
        """Relay ``result.relay`` (a conncheck or refresh) and answer once the edges have."""
        assert result.relay is not None
        p, frame = self.state.start(result.relay, prefix, result.rid)
        if frame is None:  # no edge: the answer is known now
            self._reply(p, settled=True)
            return
        if self._nursery is None or not self.edge_pub.send_frame(frame):
            self.state.finish(p.cmd)
            log.warning("command not relayed to the edges method=%s", result.method)
            self._reply(p, settled=False)
            return
        log.debug("command relayed method=%s cmd=%d edges=%d", result.method, p.cmd, len(p.waiting))
        self._events[p.cmd] = trio.Event()
        self._nursery.start_soon(self._wait, p)

    def on_notice(self, subscribed: bool, edge: str) -> None:
        log.debug("edge %s edge=%s", "present" if subscribed else "gone", edge)
        for p in self.state.on_notice(subscribed, edge):
            self._settled(p)

    def on_answer(self, answer: CommandAnswer) -> None:
        p = self.state.on_answer(answer)
        if p is not None:
            self._settled(p)

    def _settled(self, p: Pending) -> None:
        event = self._events.get(p.cmd)
        if event is not None:
            event.set()

    async def _wait(self, p: Pending) -> None:
        event = self._events[p.cmd]
        try:
            with trio.move_on_after(self.timeout_s):
                await event.wait()
        finally:
            del self._events[p.cmd]
        if self.state.finish(p.cmd) is not None:  # not settled in time
            log.warning(
                "edges did not answer a command in time op=%s cmd=%d silent=%s",
                p.command.op,
                p.cmd,
                ",".join(sorted(p.waiting)),
            )
            self._reply(p, settled=False)
        else:
            self._reply(p, settled=True)

    def _reply(self, p: Pending, *, settled: bool) -> None:
        self.command.send(
            p.prefix + [commands.relay_reply(p.rid, p.command, p.found, complete=settled)]
        )

    def statistics(self) -> EdgeCommandsStatistics:
        return self.state.statistics()
