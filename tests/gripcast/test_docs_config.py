"""Every config key is documented with its real default in README.md and deploy/gripcast.toml.

broker/config.py is the source of truth; the README's configuration table and the example
config file must list every key with the same default, so the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from broker.config import DEFAULT_PORTS, Config

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f.name for f in dataclasses.fields(Config)]

# a README table row: | `key`[, `key`...] [(`--flag`)] | default[, default...] | meaning |
_ROW = re.compile(r"^\| (`\w+`(?:, `\w+`)*)(?: \(`--[\w-]+`\))? \| ([^|]*) \|")
# a commented-out key in the example config: "# client_port = 7999   # comment"
_COMMENTED = re.compile(r"^#\s*(\w+) = (\S+)")


def _default(key: str):
    """The effective default of ``key``: ports left unset mean their DEFAULT_PORTS value."""
    value = getattr(Config(), key)
    if value is None and key in DEFAULT_PORTS:
        return DEFAULT_PORTS[key]
    if isinstance(value, tuple):
        return list(value)
    return value


def _same(documented, actual) -> bool:
    if isinstance(actual, bool) or isinstance(documented, bool):
        return documented is actual
    if isinstance(actual, (int, float)) and isinstance(documented, (int, float)):
        return float(documented) == float(actual)
    return documented == actual


def _readme_defaults() -> dict[str, object]:
    """Key -> default from the README's configuration table (cells parsed as TOML values)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    found: dict[str, object] = {}
    for line in section.splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        names = re.findall(r"`(\w+)`", m.group(1))
        cell = re.sub(r"\s*\(.*?\)\s*$", "", m.group(2).strip())  # "0 (off)" -> "0"
        cells = [c.strip().strip("`") for c in cell.split(",")]
        if len(cells) == 1:
            cells = cells * len(names)  # one default shared by every key of the row
        assert len(cells) == len(names), f"README row {line!r}: keys and defaults do not pair"
        for name, raw in zip(names, cells):
            found[name] = _parse_cell(raw)
    return found


def _parse_cell(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word such as memory, pushpin, 0.0.0.0


def _toml_defaults() -> dict[str, object]:
    """Key -> value from deploy/gripcast.toml, including the commented-out port keys."""
    path = ROOT / "deploy" / "gripcast.toml"
    found: dict[str, object] = {}
    for value in tomllib.loads(path.read_text()).values():
        if isinstance(value, dict):
            found.update(value)
    for line in path.read_text().splitlines():
        m = _COMMENTED.match(line)
        if m and m.group(1) in DEFAULT_PORTS:
            found[m.group(1)] = int(m.group(2))
    return found


@pytest.mark.parametrize("key", KEYS)
def test_readme_table_has_key_with_default(key):
    documented = _readme_defaults()
    assert key in documented, f"{key} is missing from README.md's configuration table"
    assert _same(documented[key], _default(key)), (
        f"README.md says {key} defaults to {documented[key]!r}; broker/config.py: {_default(key)!r}"
    )


@pytest.mark.parametrize("key", KEYS)
def test_example_config_has_key_with_default(key):
    documented = _toml_defaults()
    assert key in documented, f"{key} is missing from deploy/gripcast.toml"
    assert _same(documented[key], _default(key)), (
        f"deploy/gripcast.toml sets {key} = {documented[key]!r}; "
        f"broker/config.py: {_default(key)!r}"
    )


def test_docs_list_no_unknown_keys():
    unknown = (set(_readme_defaults()) | set(_toml_defaults())) - set(KEYS)
    assert not unknown, f"documented keys that broker/config.py does not have: {sorted(unknown)}"
