from typing import Any, TypeVar

_T = TypeVar("_T")

def normalise_item(
    value: dict[Any, Any], channel: str | None, json: bool, item_cls: type[_T]
) -> _T | None: ...

NO_META: dict[str, str]

def payload_bytes(formats: Any) -> int: ...
def unpack_batch(data: bytes, item_cls: type[Any]) -> Any: ...
