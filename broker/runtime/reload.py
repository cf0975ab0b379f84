"""Which config keys a running process can take on SIGHUP (sans-IO).

``plan_reload(running, new, reloadable)`` compares the running config with a freshly loaded
one and returns the config to install (the running one with only the reloadable keys
changed) and the keys that changed but need a restart (they are logged, not applied).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from broker.config import Config, reloadable_keys

# the keys marked reloadable on the Config fields themselves (broker.config._reload)
EDGE_RELOADABLE = reloadable_keys("edge")  # routes: also the routes file, re-read every time
BROKER_RELOADABLE = reloadable_keys("broker")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    config: Config  # what to install
    applied: tuple[str, ...]  # changed keys that take effect
    needs_restart: tuple[str, ...]  # changed keys that only a restart applies


def plan_reload(running: Config, new: Config, reloadable: frozenset[str]) -> ReloadPlan:
    applied, restart, changes = [], [], {}
    for f in fields(Config):
        old_v, new_v = getattr(running, f.name), getattr(new, f.name)
        if old_v == new_v:
            continue
        if f.name in reloadable:
            applied.append(f.name)
            changes[f.name] = new_v
        else:
            restart.append(f.name)
    return ReloadPlan(running.replace(**changes), tuple(applied), tuple(restart))
