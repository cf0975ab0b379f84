"""JSON Patch (RFC 6902) for published ``http-response`` ``body-patch`` (sans-IO).

``apply_patch(doc, ops)`` returns a new document (the input is not modified); ``patch_body(body,
ops)`` parses a JSON body, patches it and serialises it back (compact, UTF-8).  Operations:
``add``, ``remove``, ``replace``, ``move``, ``copy``, ``test``; paths are JSON Pointers
(RFC 6901: ``/a/0/b``, ``~0`` = ``~``, ``~1`` = ``/``, ``-`` = end of an array for ``add``).
Any invalid operation, missing target or failed ``test`` raises ``PatchError`` and nothing is
applied (Pushpin then keeps the unpatched body).

Limits (a publisher is not trusted with the edge's memory or its loop): at most
``MAX_PATCH_OPS`` operations, no value (in an operation or in the document) nested deeper than
``MAX_PATCH_DEPTH``, and a document of at most ``MAX_PATCH_RESULT_BYTES`` (estimated while
patching, so ``copy`` from the root cannot double the document twenty times, and checked
exactly on the serialised result).  Past a limit: ``PatchLimitError`` (a ``PatchError``), so
the one session whose response it was gets Pushpin's behaviour for a patch that does not apply
and nothing else notices.  The broker refuses such a publish with the same limits
(``broker.items``), so this is the second line.  Values are copied by ``_clone``, which counts
what it copies, never by ``copy.deepcopy`` (unbounded, recursive).
"""

from __future__ import annotations

import json
from typing import Any

from broker.errors import RemoteProtocolError
from broker.items import MAX_PATCH_DEPTH, MAX_PATCH_OPS, MAX_PATCH_RESULT_BYTES

__all__ = [
    "MAX_PATCH_DEPTH",
    "MAX_PATCH_OPS",
    "MAX_PATCH_RESULT_BYTES",
    "PatchError",
    "PatchLimitError",
    "apply_patch",
    "parse_pointer",
    "patch_body",
]

# a decoded JSON value (dict, list, str, int, float, bool or None), checked where it is used
JSON = Any


class PatchError(RemoteProtocolError):
    """The patch cannot be applied."""


class PatchLimitError(PatchError):
    """The patch, or the document it makes, is past a limit (see the module docstring)."""


class _Budget:
    """The estimated size of the document being patched (an upper bound: removals do not
    give bytes back), against ``MAX_PATCH_RESULT_BYTES``."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0

    def charge(self, n: int) -> None:
        self.size += n
        if self.size > MAX_PATCH_RESULT_BYTES:
            raise PatchLimitError(f"patched document over {MAX_PATCH_RESULT_BYTES} bytes")


def _clone(value: JSON, depth_left: int, budget: _Budget) -> JSON:
    """A copy of the JSON value ``value``; charges its estimated serialised size to ``budget``
    and raises PatchLimitError past ``depth_left`` levels of nesting or past the budget."""
    t = type(value)
    if t is dict:
        if depth_left <= 0:
            raise PatchLimitError(f"value nested deeper than {MAX_PATCH_DEPTH}")
        budget.charge(2 + len(value))
        out: dict[str, JSON] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise PatchError("object key must be a string")
            budget.charge(len(k) + 3)
            out[k] = _clone(v, depth_left - 1, budget)
        return out
    if t is list:
        if depth_left <= 0:
            raise PatchLimitError(f"value nested deeper than {MAX_PATCH_DEPTH}")
        budget.charge(2 + len(value))
        return [_clone(v, depth_left - 1, budget) for v in value]
    if t is str:
        budget.charge(len(value) + 2)
        return value
    if value is None or t is bool:
        budget.charge(5)
        return value
    if t is int or t is float:
        budget.charge(24)
        return value
    raise PatchError(f"not a JSON value: {t.__name__}")


def parse_pointer(path: object) -> list[str]:
    if not isinstance(path, str):
        raise PatchError("path must be a string")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[JSON], token: str, *, for_add: bool = False) -> int:
    if for_add and token == "-":
        return len(container)
    if (
        not (token.isascii() and token.isdigit())
        or (len(token) > 1 and token[0] == "0")
        or len(token) > 18
    ):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not for_add):
        raise PatchError(f"array index {i} out of range")
    return i


def _parent(doc: JSON, tokens: list[str]) -> JSON:
    cur = doc
    for t in tokens[:-1]:
        if isinstance(cur, dict):
            if t not in cur:
                raise PatchError(f"path segment {t!r} not found")
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_index(cur, t)]
        else:
            raise PatchError(f"cannot descend into {type(cur).__name__}")
    return cur


def _get(doc: JSON, tokens: list[str]) -> JSON:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path segment {last!r} not found")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last)]
    raise PatchError("target parent is not a container")


def _add(doc: JSON, tokens: list[str], value: JSON) -> JSON:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError("target parent is not a container")
    return doc


def _remove(doc: JSON, tokens: list[str]) -> JSON:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path segment {last!r} not found")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last))
    raise PatchError("target parent is not a container")


def _check_ops(ops: object) -> None:
    if not isinstance(ops, list):
        raise PatchError("patch must be a list of operations")
    if len(ops) > MAX_PATCH_OPS:
        raise PatchLimitError(f"more than {MAX_PATCH_OPS} operations")


def apply_patch(doc: JSON, ops: JSON) -> JSON:
    """``doc`` patched by ``ops`` (a new document; ``doc`` is left as it was)."""
    _check_ops(ops)
    budget = _Budget()
    doc = _clone(doc, MAX_PATCH_DEPTH, budget)  # also bounds the input's depth and size
    return _apply(doc, ops, budget)


def _value(op: dict[str, JSON], path: list[str], budget: _Budget) -> JSON:
    # a value added at ``path`` sits len(path) levels down: the document stays within the depth
    return _clone(op["value"], MAX_PATCH_DEPTH - len(path), budget)


def _apply(doc: JSON, ops: JSON, budget: _Budget) -> JSON:
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchError("operation must be an object with 'op'")
        name = op["op"]
        path = parse_pointer(op.get("path"))
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"'{name}' needs 'value'")
        if len(path) > MAX_PATCH_DEPTH:
            raise PatchLimitError(f"path deeper than {MAX_PATCH_DEPTH}")
        if name == "add":
            doc = _add(doc, path, _value(op, path, budget))
        elif name == "remove":
            _remove(doc, path)
        elif name == "replace":
            if not path:
                doc = _value(op, path, budget)
            else:
                _get(doc, path)
                value = _value(op, path, budget)
                _remove(doc, path)
                doc = _add(doc, path, value)
        elif name in ("move", "copy"):
            src = parse_pointer(op.get("from"))
            if name == "move" and path[: len(src)] == src and len(path) > len(src):
                raise PatchError("cannot move a value into itself")
            value = _get(doc, src)
            # the copy is charged (a copy from the root doubles the document); a move is too,
            # as the moved value may now sit deeper
            value = _clone(value, MAX_PATCH_DEPTH - len(path), budget)
            if name == "move":
                _remove(doc, src)
            doc = _add(doc, path, value)
        elif name == "test":
            # compare what is bounded: the value's depth is checked before ``==`` recurses
            _clone(op["value"], MAX_PATCH_DEPTH, _Budget())
            if _get(doc, path) != op["value"]:
                raise PatchError(f"test failed at {op.get('path')!r}")
        else:
            raise PatchError(f"unknown op {name!r}")
    return doc


def patch_body(body: bytes, ops: JSON) -> bytes:
    """``body`` (JSON) patched by ``ops``, serialised compact; PatchError when it cannot be."""
    _check_ops(ops)
    if len(body) > MAX_PATCH_RESULT_BYTES:
        raise PatchLimitError(f"body over {MAX_PATCH_RESULT_BYTES} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PatchError("body is not JSON") from exc
    try:
        out = json.dumps(apply_patch(doc, ops), separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )
    except UnicodeEncodeError as exc:  # a lone surrogate in a value: not text
        raise PatchError("value is not encodable text") from exc
    if len(out) > MAX_PATCH_RESULT_BYTES:
        raise PatchLimitError(f"patched document over {MAX_PATCH_RESULT_BYTES} bytes")
    return out
