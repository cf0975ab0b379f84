from collections.abc import Iterable

Headers = Iterable[tuple[bytes, bytes]]

def rules_clean(headers: Headers, ruled: frozenset[bytes], prefix: bytes) -> bool: ...
def forward_filter(
    headers: Headers, drop: frozenset[bytes], keep_grip: bool
) -> tuple[bytes, list[tuple[bytes, bytes]]]: ...
def head_join(
    method: bytes, target: bytes, host: bytes, headers: Headers, tokens: set[bytes] | None
) -> bytes | None: ...
