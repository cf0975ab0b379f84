"""No hidden globals on the edge (issue 12): per-run state lives on objects the edge creates
(``Edge.origin_client`` and the rest), and every task runs in a nursery the edge owns.

Read from the source with ``ast``: no ``trio.lowlevel.RunVar`` (state keyed by the trio run,
invisible to whoever owns the edge), no ``spawn_system_task`` (an error there ends the whole
process outside any nursery the edge owns), and no module-level mutable containers in the
origin side's modules."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
EDGE = sorted((ROOT / "edge").rglob("*.py"))
ORIGIN_SIDE = ["edge/origin/client.py", "edge/origin/pool.py", "edge/readtimer.py"]


def _names(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.ImportFrom):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("path", EDGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_run_vars_or_system_tasks(path):
    used = _names(ast.parse(path.read_text(), str(path))) & {"RunVar", "spawn_system_task"}
    assert used == set(), f"{path.relative_to(ROOT)} uses {sorted(used)}"


def _mutable(value: ast.expr | None) -> bool:
    if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id in {"dict", "list", "set", "defaultdict", "OrderedDict", "deque"}
    )


@pytest.mark.parametrize("rel", ORIGIN_SIDE)
def test_origin_side_has_no_module_level_mutable_state(rel):
    tree = ast.parse((ROOT / rel).read_text(), rel)
    bad = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and _mutable(node.value):
            bad.extend(ast.unparse(t) for t in node.targets)
        elif isinstance(node, ast.AnnAssign) and _mutable(node.value):
            bad.append(ast.unparse(node.target))
    bad.extend(n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names)
    assert bad == [], f"{rel}: module-level mutable state {bad}"
