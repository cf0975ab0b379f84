"""JSON Patch (RFC 6902) for published ``http-response`` ``body-patch`` (sans-IO).

``apply_patch(doc, ops)`` returns a new document (the input is not modified); ``patch_body(body,
ops)`` parses a JSON body, patches it and serialises it back (compact, UTF-8).  Operations:
``add``, ``remove``, ``replace``, ``move``, ``copy``, ``test``; paths are JSON Pointers
(RFC 6901: ``/a/0/b``, ``~0`` = ``~``, ``~1`` = ``/``, ``-`` = end of an array for ``add``).
Any invalid operation, missing target or failed ``test`` raises ``PatchError`` and nothing is
applied (Pushpin then keeps the unpatched body).
"""
from __future__ import annotations

import copy
import json


class PatchError(ValueError):
    """The patch cannot be applied."""


def parse_pointer(path: str) -> list[str]:
    if not isinstance(path, str):
        raise PatchError("path must be a string")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list, token: str, *, for_add: bool = False) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not for_add):
        raise PatchError(f"array index {i} out of range")
    return i


def _parent(doc, tokens: list[str]):
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


def _get(doc, tokens: list[str]):
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


def _add(doc, tokens: list[str], value):
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


def _remove(doc, tokens: list[str]):
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


def apply_patch(doc, ops):
    if not isinstance(ops, list):
        raise PatchError("patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchError("operation must be an object with 'op'")
        name = op["op"]
        path = parse_pointer(op.get("path"))
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"'{name}' needs 'value'")
        if name == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif name == "remove":
            _remove(doc, path)
        elif name == "replace":
            if not path:
                doc = copy.deepcopy(op["value"])
            else:
                _get(doc, path)
                _remove(doc, path)
                doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif name in ("move", "copy"):
            src = parse_pointer(op.get("from"))
            if name == "move" and path[:len(src)] == src and len(path) > len(src):
                raise PatchError("cannot move a value into itself")
            value = _get(doc, src)
            if name == "move":
                _remove(doc, src)
            doc = _add(doc, path, copy.deepcopy(value))
        elif name == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"test failed at {op.get('path')!r}")
        else:
            raise PatchError(f"unknown op {name!r}")
    return doc


def patch_body(body: bytes, ops) -> bytes:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PatchError("body is not JSON") from exc
    return json.dumps(apply_patch(doc, ops), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
