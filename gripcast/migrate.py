"""From a Pushpin config to gripcast: ``--pushpin-config FILE`` and ``gripcast migrate FILE``.

``read_pushpin_config`` reads the files (``gripcast.pushpinconf`` does the rest, sans-IO) and
returns the translation; ``render_toml`` prints it as a gripcast.toml whose settings give the
same Config (``load_config(path)`` of the output equals ``load_config(file_values=...)`` of the
translation), with the warnings as comments.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from broker.config import Config
from gripcast import pushpinconf
from gripcast.pushpinconf import Translation


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def gripcast_defaults() -> dict[str, Any]:
    """Config key -> default (with the defaults of the mapped keys Config may lack)."""
    out: dict[str, Any] = dict(pushpinconf.MAPPED_DEFAULTS)
    for f in dataclasses.fields(Config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def read_pushpin_config(path: str, libdir: str | None = None) -> Translation:
    """Read and translate ``path`` (raises ``ConfigError`` naming file, line and key)."""
    conf = pushpinconf.load(
        path, _read, cwd=os.getcwd(), libdir=libdir or pushpinconf.DEFAULT_LIBDIR
    )
    return pushpinconf.translate(conf, gripcast_defaults())


def messages(t: Translation) -> list[str]:
    """The warnings (and the internal-wiring note) to log when the config is used."""
    out = [str(w) for w in t.warnings]
    note = pushpinconf.internal_note(t)
    if note:
        out.append(note)
    return out


def ensure_rundir(t: Translation) -> None:
    """Create Pushpin's ``rundir`` when a stats ipc socket lives in it (Pushpin creates it)."""
    spec = t.settings.get("stats_spec", "")
    rundir = t.conf.rundir
    if rundir and spec.startswith("ipc://") and spec[6:].startswith(rundir + "/"):
        os.makedirs(rundir, exist_ok=True)


# -- TOML output --------------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} has no TOML form here")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are TOML's
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def render_toml(t: Translation) -> str:
    """A gripcast.toml equivalent to the translated pushpin.conf."""
    lines = [
        f"# gripcast.toml made by `gripcast migrate` from {t.conf.path}",
        "# Run it with: gripcast run --config <this file>   (every key: deploy/gripcast.toml)",
        "# Keys not listed keep gripcast's default, which is Pushpin's.",
    ]
    notes = messages(t)
    if notes:
        lines += ["#", "# Pushpin settings with no effect in gripcast (warnings):"]
        lines += [f"#   {n}" for n in notes]
    lines.append("")
    for key in sorted(t.settings):
        src = t.sources.get(key)
        if src is not None:
            lines.append(f"# from {src.name} (line {src.line} of {src.file})")
        else:
            lines.append("# not set in the Pushpin config: Pushpin's own default")
        lines.append(f"{key} = {toml_value(t.settings[key])}")
    return "\n".join(lines) + "\n"
