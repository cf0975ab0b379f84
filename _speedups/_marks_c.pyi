from typing import Any

def held_marks(
    data: bytes, tracks: dict[str, Any], live: object
) -> tuple[int, list[tuple[str, str, int]]]: ...
