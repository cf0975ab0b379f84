"""Layering, read from the import statements (``ast``), as LAYOUT.md (issue 12) sets it:

* edge modules import from ``broker`` only the contract: config, wire, items, errors, keys,
  curve, histogram and ``broker.runtime.*``;
* sans-IO modules import no trio, zmq, socket, time or logging (they take bytes, events and
  ``now``; tests drive them with no sockets and no sleeps)."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

BROKER_CONTRACT = {
    "broker.config",
    "broker.wire",
    "broker.items",
    "broker.errors",
    "broker.keys",
    "broker.curve",
    "broker.histogram",
    "broker.runtime",
    "broker.namespaces",  # the [[namespace]] tables of the config
}
# until the broker restructure lands, its runtime modules still sit at the top of broker/;
# broker.opshttp (serve_ops, the ops listener edges use for /metrics) must go to broker.runtime
BROKER_RUNTIME_FLAT: set[str] = set()  # every shared runtime module is under broker.runtime

SANS_IO = [
    "broker/sequencer.py",
    "broker/history.py",
    "broker/control.py",
    "broker/ingest/edgecmds.py",
    "broker/ratelimit.py",
    "broker/items.py",
    "broker/wire.py",
    "broker/ingest/tnetstring.py",
    "broker/store/sentinel.py",
    "edge/routes.py",
    "edge/grip/instruct.py",
    "edge/grip/filters.py",
    "edge/grip/jsonpatch.py",
    "edge/grip/sseid.py",
    "edge/grip/nextlink.py",
    "edge/grip/nextlink_track.py",
    "edge/sync/tracker.py",
    "edge/sync/hub.py",
    "edge/ws/events.py",
    "edge/ws/control.py",
    "edge/http1/headers.py",
    "edge/proxyrules.py",
    "edge/cors.py",
    "edge/jsonp.py",
    "edge/grip/aco.py",
    "edge/timers.py",
    "broker/ops/stats.py",
    "broker/ops/status.py",
    "edge/ops/connstats.py",
    "broker/namespaces.py",
    "broker/ops/presence.py",
    "gripcast/pushpinini.py",
    "gripcast/pushpinconf.py",
]
IO_MODULES = {"trio", "zmq", "socket", "time", "logging"}


def _imports(path: pathlib.Path) -> list[str]:
    """Absolute module names imported by ``path`` (every ``import`` and ``from``, anywhere)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append(base)
            out.extend(f"{base}.{a.name}" for a in node.names)  # from broker import x
    return out


def _allowed(name: str) -> bool:
    if not name.startswith("broker.") or name in ("broker",):
        return True
    top = ".".join(name.split(".")[:2])
    return top in BROKER_CONTRACT or top in BROKER_RUNTIME_FLAT


def test_edge_imports_only_the_broker_contract():
    bad = {}
    for path in sorted((ROOT / "edge").rglob("*.py")):
        names = [n for n in _imports(path) if n == "broker" or n.startswith("broker.")]
        wrong = sorted({n for n in names if not _allowed(n)})
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert bad == {}, f"edge modules importing broker internals: {bad}"


@pytest.mark.parametrize("rel", SANS_IO)
def test_sans_io_modules_import_no_io(rel):
    # "a|b": the module's path after or before the broker restructure (whichever exists)
    path = next((ROOT / r for r in rel.split("|") if (ROOT / r).exists()), None)
    assert path is not None, f"{rel}: no such module"
    io = sorted({n for n in _imports(path) if n.split(".")[0] in IO_MODULES})
    assert io == [], f"{rel} is sans-IO but imports {io}"
