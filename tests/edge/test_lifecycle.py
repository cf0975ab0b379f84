"""edge.ops.lifecycle.end_session: how each kind of held session is ended for shutdown."""
from edge.grip.instruct import Hold
from edge.ops.lifecycle import end_session
from edge.grip.session import ResponseSession, StreamSession


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


def test_session_with_close_for_shutdown_closes_itself():
    class Ws:
        kind = "ws"
        calls = 0

        def close_for_shutdown(self):
            self.calls += 1

    ws = Ws()
    assert end_session(ws) is None
    assert ws.calls == 1
