from collections import OrderedDict
from typing import Any

DONE: int
SLOW: int
WAIT: int

def sequence_run(
    items: list[Any],
    start: int,
    pending: dict[str, Any],
    ids: dict[Any, float],
    ids_old: dict[Any, float],
    gen_max: int,
    last_ids: OrderedDict[str, str],
    last_ids_max: int,
    now: float,
    ttl: float,
    expiry: float,
    out: list[Any],
) -> tuple[int, int, int, int, bool]: ...
