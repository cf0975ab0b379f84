"""edge.ops.lifecycle.end_session: how each kind of held session is ended for shutdown."""

from types import SimpleNamespace

from edge.grip.instruct import Hold
from edge.grip.session import ResponseSession, StreamSession
from edge.ops.lifecycle import end_session
from edge.ws.session import WsSession


class _Fd:
    """Only a file number: end_session writes nothing itself."""

    def fileno(self):
        return 99


def test_stream_gets_its_final_chunk_once():
    s = StreamSession(_Fd(), Hold(mode="stream"), True, now=0.0)
    assert end_session(s) == (s, [b"0\r\n\r\n"])
    assert s.closing
    assert end_session(s) is None  # idempotent
    raw = StreamSession(_Fd(), Hold(mode="stream"), False, now=0.0)
    assert end_session(raw) == (raw, [b""])  # HTTP/1.0: the close itself ends it


def test_long_poll_gets_its_timeout_response_with_connection_close():
    s = ResponseSession(Hold(mode="response", body=b"timeout"), keep_alive=True, deadline=9)
    assert end_session(s) is None
    assert s.result.endswith(b"timeout")
    assert b"Connection: close" in s.result or b"connection: close" in s.result.lower()


class _Nursery:
    def __init__(self):
        self.started = []

    def start_soon(self, fn, *args):
        self.started.append((fn, args))


def test_websocket_closes_itself_1012_once():
    app = SimpleNamespace(nursery=_Nursery())
    ws = WsSession(app, _Fd(), side=None, prefix="", now=0.0, max_message=1 << 20)
    assert end_session(ws) is None
    assert [(fn.__name__, args) for fn, args in app.nursery.started] == [
        ("close", (1012, "service restart"))
    ]
    ws.close_frame(1012, "service restart")  # what that task queues first
    assert end_session(ws) is None and len(app.nursery.started) == 1
