"""The one place that chooses between the compiled and the pure-Python twins.

Each hot helper exists twice with the same API and behaviour: ``_<name>_c`` (Cython,
built by ``pip install``) and ``_<name>_py`` (pure Python).  Callers import from here:

    from _speedups import http_chunk, send_batch

``GRIPCAST_NO_SPEEDUPS=1`` forces the pure twins; ``GRIPCAST_REQUIRE_SPEEDUPS=1`` makes a
missing compiled twin an ImportError instead of a silent fallback.  ``COMPILED`` tells which
twins were loaded.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

_NAMES = (
    "framing",
    "sendmany",
    "wsframe",
    "items",
    "tnetstring",
    "fanout",
    "marks",
    "deliver",
    "history",
    "sequence",
    "headers",
)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def twin(name: str, compiled: bool) -> ModuleType:
    """Return one twin module by name: ``twin("framing", compiled=True)``."""
    return importlib.import_module(f"_speedups._{name}_{'c' if compiled else 'py'}")


def _choose() -> tuple[bool, dict[str, ModuleType]]:
    if _truthy("GRIPCAST_NO_SPEEDUPS"):
        return False, {n: twin(n, False) for n in _NAMES}
    try:
        return True, {n: twin(n, True) for n in _NAMES}
    except ImportError:
        if _truthy("GRIPCAST_REQUIRE_SPEEDUPS"):
            raise
        return False, {n: twin(n, False) for n in _NAMES}


COMPILED, _modules = _choose()

if TYPE_CHECKING:
    # the types: the pure twins' signatures (each ``_<name>_c.pyi`` states the same ones)
    from _speedups._deliver_py import SessionCore, queue_singles, send_pending, send_plain
    from _speedups._fanout_py import (
        atom_pair,
        decode_envelopes,
        encode_envelopes,
        fan_out,
        first_none,
        first_topic,
        make_envelope,
        message_packets,
        recv_frames,
        recv_single,
        retain,
        send_frames,
        split_batch,
    )
    from _speedups._framing_py import http_chunk, http_chunks
    from _speedups._headers_py import (
        forward_filter,
        grip_facts,
        head_join,
        request_facts,
        rules_clean,
    )
    from _speedups._history_py import HistoryChannel, append_many
    from _speedups._items_py import (
        NO_META,
        digit_run,
        first_hint,
        normalise_item,
        parse_j_frames,
        payload_bytes,
        unpack_batch,
    )
    from _speedups._marks_py import held_marks
    from _speedups._sendmany_py import send_batch
    from _speedups._sequence_py import sequence_run
    from _speedups._tnetstring_py import tnet_pop
    from _speedups._wsframe_py import ws_frame, ws_mask, ws_parse
else:
    encode_envelopes = _modules["fanout"].encode_envelopes
    decode_envelopes = _modules["fanout"].decode_envelopes
    fan_out = _modules["fanout"].fan_out
    make_envelope = _modules["fanout"].make_envelope
    message_packets = _modules["fanout"].message_packets
    retain = _modules["fanout"].retain
    atom_pair = _modules["fanout"].atom_pair
    first_topic = _modules["fanout"].first_topic
    first_none = _modules["fanout"].first_none
    send_frames = _modules["fanout"].send_frames
    recv_frames = _modules["fanout"].recv_frames
    recv_single = _modules["fanout"].recv_single
    split_batch = _modules["fanout"].split_batch
    http_chunk = _modules["framing"].http_chunk
    http_chunks = _modules["framing"].http_chunks
    send_batch = _modules["sendmany"].send_batch
    normalise_item = _modules["items"].normalise_item
    unpack_batch = _modules["items"].unpack_batch
    parse_j_frames = _modules["items"].parse_j_frames
    payload_bytes = _modules["items"].payload_bytes
    first_hint = _modules["items"].first_hint
    digit_run = _modules["items"].digit_run
    NO_META = _modules["items"].NO_META
    tnet_pop = _modules["tnetstring"].tnet_pop
    ws_frame = _modules["wsframe"].ws_frame
    ws_mask = _modules["wsframe"].ws_mask
    ws_parse = _modules["wsframe"].ws_parse
    held_marks = _modules["marks"].held_marks
    send_plain = _modules["deliver"].send_plain
    queue_singles = _modules["deliver"].queue_singles
    send_pending = _modules["deliver"].send_pending
    SessionCore = _modules["deliver"].SessionCore
    HistoryChannel = _modules["history"].HistoryChannel
    append_many = _modules["history"].append_many
    sequence_run = _modules["sequence"].sequence_run
    rules_clean = _modules["headers"].rules_clean
    forward_filter = _modules["headers"].forward_filter
    head_join = _modules["headers"].head_join
    request_facts = _modules["headers"].request_facts
    grip_facts = _modules["headers"].grip_facts

__all__ = [
    "COMPILED",
    "NO_META",
    "HistoryChannel",
    "SessionCore",
    "append_many",
    "atom_pair",
    "decode_envelopes",
    "digit_run",
    "encode_envelopes",
    "fan_out",
    "first_hint",
    "first_none",
    "first_topic",
    "forward_filter",
    "grip_facts",
    "head_join",
    "http_chunk",
    "http_chunks",
    "make_envelope",
    "message_packets",
    "queue_singles",
    "normalise_item",
    "parse_j_frames",
    "payload_bytes",
    "recv_frames",
    "recv_single",
    "request_facts",
    "retain",
    "rules_clean",
    "send_batch",
    "send_frames",
    "send_pending",
    "send_plain",
    "sequence_run",
    "split_batch",
    "tnet_pop",
    "twin",
    "unpack_batch",
    "ws_frame",
    "ws_mask",
    "ws_parse",
    "held_marks",
]
