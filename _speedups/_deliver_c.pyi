from collections.abc import Callable
from typing import Any

class SessionCore:
    state: Any
    track: Any
    filters: Any
    cursor_ch: str | None
    cursor_at: Any
    cursor_more: dict[str, Any] | None
    crypt: Any
    buf: Any
    deflate: Any
    sent: int
    last_out: float
    fd: int
    chunked: bool
    writing: bool
    def __init__(self) -> None: ...
    def set_cursor(self, channel: str, cursor: Any) -> None: ...
    def cursor_of(self, channel: str) -> Any: ...
    def cursors(self) -> dict[str, Any]: ...

def send_plain(
    members: list[Any],
    start: int,
    stop: int,
    channel: str,
    cursor: str,
    env: Any,
    gate: dict[Any, Any] | None,
    chunk: bytes | None,
    raw: bytes | None,
    wsmsg: Any,
    ws_frame_fn: Callable[[Any], bytes],
    stream_cls: type,
    ws_cls: type,
    pending: dict[Any, list[bytes]],
    now: float,
    others: list[Any],
    short: list[tuple[Any, bytes, int]],
) -> tuple[int, int, bytes | None]: ...
def queue_singles(
    envs: list[Any],
    start: int,
    members_of: dict[str, Any],
    gate: dict[Any, Any] | None,
    stream_cls: type,
    ws_cls: type,
    ws_frame_fn: Callable[[Any], bytes],
    chunk_fn: Callable[[bytes], bytes],
    render_fn: Callable[[bytes, str], bytes],
    id_token: bytes,
    pending: dict[Any, list[bytes]],
    lat: Any,
    wall: float,
) -> tuple[int, int]: ...
def send_pending(
    items: list[tuple[Any, list[bytes]]],
    start: int,
    stop: int,
    now: float,
    stream_cls: type,
    ws_cls: type,
    rest: list[tuple[Any, list[bytes]]],
    short: list[tuple[Any, bytes, int]],
) -> tuple[int, int]: ...
