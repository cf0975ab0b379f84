"""Which config keys a running process can take on SIGHUP (sans-IO).

``plan_reload(running, new, reloadable)`` compares the running config with a freshly loaded
one and returns the config to install (the running one with only the reloadable keys
changed) and the keys that changed but need a restart (they are logged, not applied).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from broker.config import Config

# keys an edge applies on SIGHUP (routes: also the routes file's contents, re-read every time)
EDGE_RELOADABLE = frozenset({
    "routes", "routes_file", "sig_iss", "sig_key", "client_buffer_bytes", "client_header_bytes",
    "client_maxconn", "origin_timeout_s", "log_level", "drain_timeout_s",
    "origin_keepalive_idle_s",
})
# keys the broker applies on SIGHUP
BROKER_RELOADABLE = frozenset({
    "history_max_items", "history_max_age_s", "log_level", "drain_timeout_s",
    "stats_report_interval_s",
})


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
