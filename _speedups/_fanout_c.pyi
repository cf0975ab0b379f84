from collections.abc import Container, Iterable
from typing import Any, TypeVar

import zmq

from broker.wire import Envelope

_T = TypeVar("_T")

ENVELOPE_KEYS_PACKED: tuple[bytes, ...]

def encode_envelopes(envs: Iterable[Envelope]) -> list[bytes]: ...
def fan_out(
    sock: zmq.Socket[Any],
    envs: Iterable[Envelope],
    live: Container[str],
    recent: dict[str, tuple[str, int]],
    batch: bytes | None = None,
    batch_bytes: int = ...,
) -> tuple[int, int]: ...
def split_batch(frame: bytes, start: int, wanted: Container[bytes]) -> list[bytes]: ...

BATCH_BYTES: int

def send_frames(sock: zmq.Socket[Any], frames: list[bytes]) -> tuple[int, int]: ...
def recv_frames(sock: zmq.Socket[Any], limit: int) -> list[bytes]: ...
def recv_single(sock: zmq.Socket[Any], limit: int) -> tuple[list[bytes], int]: ...
def make_envelope(
    cls: type[_T],
    channel: str,
    seq: int,
    epoch: str,
    formats: dict[str, dict[str, Any]],
    id: str | None,
    prev_id: str | None,
    meta: dict[str, str],
    ts: float,
) -> _T: ...
def decode_envelopes(frames: list[bytes], cls: type[_T]) -> list[_T | None]: ...
def retain(env: Envelope) -> None: ...
def atom_pair(a: Any, b: Any) -> tuple[Any, Any]: ...
def first_topic(frames: list[Any]) -> int: ...
def first_none(values: list[Any]) -> int: ...
def message_packets(
    envs: Iterable[Envelope],
    live: Container[str],
    subs: dict[tuple[str, str], int],
    chan_subs: Container[str],
    head: bytes,
    transports: dict[str, bytes],
) -> list[bytes]: ...
