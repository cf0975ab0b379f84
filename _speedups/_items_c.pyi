from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

def normalise_item(
    value: dict[Any, Any], channel: str | None, json: bool, item_cls: type[_T]
) -> _T | None: ...

NO_META: dict[str, str]

def payload_bytes(formats: Any) -> int: ...
def digit_run(data: bytes | bytearray | memoryview, n: int) -> bool: ...
def first_hint(items: Any) -> int: ...
def unpack_batch(data: bytes, item_cls: type[Any]) -> Any: ...
def parse_j_frames(
    frames: list[Any],
    scan_once: Callable[[str, int], tuple[Any, int]],
    item_cls: type[_T],
    max_bytes: int,
    slow: Callable[[Any], tuple[list[Any], list[str]]],
    loads: Callable[[bytes], Any] | None = None,
    long_digits: int = 19,
) -> tuple[list[Any], list[str]]: ...
