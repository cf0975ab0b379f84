"""Pushpin's ``pushpin.conf`` INI format, read as Pushpin's ``Settings`` class reads it (sans-IO:
files come through ``read``).

``load(path, read)`` parses the file (QSettings' INI format): ``[section]`` headers,
``key=value`` lines, ``#``/``;`` comment lines, a ``;`` ending a value outside double quotes, an
unquoted ``,`` making a value a list.  ``[global] include=`` names a second file whose keys apply
where the main file does not set them (a relative path is taken from the config file's
directory; exactly ``internal.conf`` means ``{libdir}/internal.conf``, Pushpin's compatibility
rule).  ``PushpinConf.resolve`` substitutes ``{libdir}``, ``{rundir}`` and ``{ipc_prefix}`` and
adds ``port_offset`` to the port of every ``tcp://host:port`` spec, as Pushpin does.
``gripcast.pushpinconf`` says what each key means for gripcast.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from broker.errors import ConfigError

DEFAULT_LIBDIR = "/usr/lib/pushpin"  # Debian's (Pushpin's compiled-in LIBDIR)

Value = str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``key=value`` line of a pushpin.conf (or of the file it includes)."""

    file: str
    line: int
    section: str
    key: str
    value: Value  # a tuple when the value had an unquoted comma

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: [{self.section}] {self.key}"

    @property
    def name(self) -> str:
        return f"[{self.section}] {self.key}"


@dataclass(frozen=True, slots=True)
class PushpinConf:
    """A parsed pushpin.conf: its entries (the main file's over the included file's) and the
    substitution variables."""

    path: str  # absolute
    entries: dict[tuple[str, str], Entry]
    libdir: str
    rundir: str
    ipc_prefix: str
    port_offset: int
    include: str = ""  # the included file's path, or ""
    include_missing: bool = False

    @property
    def directory(self) -> str:
        return posixpath.dirname(self.path)

    def resolve(self, text: str) -> str:
        """Pushpin's ``Settings::resolveVars``: variables, then ``port_offset`` on tcp specs."""
        out = (
            text.replace("{libdir}", self.libdir)
            .replace("{rundir}", self.rundir)
            .replace("{ipc_prefix}", self.ipc_prefix)
        )
        if self.port_offset:
            out = _TCP_PORT.sub(lambda m: m.group(1) + str(int(m.group(2)) + self.port_offset), out)
        return out

    def text(self, e: Entry) -> str:
        """The entry's value as one string (a list joined with commas), resolved."""
        raw = ",".join(e.value) if isinstance(e.value, tuple) else e.value
        return self.resolve(raw)

    def items(self, e: Entry) -> tuple[str, ...]:
        """The entry's value as a list (empty items dropped), each item resolved."""
        raw = e.value if isinstance(e.value, tuple) else (e.value,)
        return tuple(self.resolve(v.strip()) for v in raw if v.strip())


_TCP_PORT = re.compile(r"(tcp://[^,\s]*:)(\d+)")


# -- parsing -----------------------------------------------------------------------------------


def _parse_value(raw: str) -> Value:
    """A QSettings INI value: quotes group (with backslash escapes), an unquoted comma splits
    into a list, an unquoted ``;`` starts a comment."""
    items: list[str] = []
    cur: list[str] = []
    split = False
    i = 0
    quoted = False
    while i < len(raw):
        c = raw[i]
        if quoted:
            if c == "\\" and i + 1 < len(raw):
                nxt = raw[i + 1]
                cur.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                i += 2
                continue
            if c == '"':
                quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = True
        elif c == ";":
            break
        elif c == ",":
            items.append("".join(cur).strip())
            cur = []
            split = True
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur).strip())
    return tuple(items) if split else items[0]


def parse_ini(text: str, file: str) -> list[Entry]:
    """Every ``key=value`` of ``text``; ``ConfigError`` for a line that is neither."""
    entries: list[Entry] = []
    problems: list[str] = []
    section = "General"
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            if not s.endswith("]") or len(s) < 3:
                problems.append(f"{file}:{n}: malformed section header {s!r}")
                continue
            section = s[1:-1].strip()
            continue
        key, eq, raw = s.partition("=")
        key = key.strip()
        if not eq or not key:
            problems.append(f"{file}:{n}: expected key=value or [section], not {s!r}")
            continue
        entries.append(Entry(file, n, section, key, _parse_value(raw.strip())))
    if problems:
        raise ConfigError(problems)
    return entries


def load(
    path: str,
    read: Callable[[str], str],
    *,
    cwd: str = "/",
    libdir: str = DEFAULT_LIBDIR,
) -> PushpinConf:
    """Parse ``path`` and the file its ``include=`` names (``read(path)`` returns a file's
    text or raises ``OSError``; ``cwd`` makes relative paths absolute, as Pushpin's do)."""
    path = posixpath.normpath(posixpath.join(cwd, path))
    try:
        main = parse_ini(read(path), path)
    except OSError as exc:
        raise ConfigError([f"cannot read pushpin config {path}: {exc.strerror or exc}"]) from exc
    raw = {(e.section, e.key): e for e in main}

    def raw_text(section: str, key: str, default: str = "") -> str:
        e = raw.get((section, key))
        if e is None:
            return default
        return ",".join(e.value) if isinstance(e.value, tuple) else e.value

    libdir = raw_text("global", "libdir") or libdir
    rundir = raw_text("global", "rundir") or raw_text("runner", "rundir")
    ipc_prefix = raw_text("global", "ipc_prefix", "pushpin-")
    offset_s = raw_text("global", "port_offset", "0") or "0"
    try:
        port_offset = int(offset_s)
    except ValueError:
        e = raw[("global", "port_offset")]
        raise ConfigError([f"{e.where}: {offset_s!r} is not an integer"]) from None
    conf = PushpinConf(path, {}, libdir, "", ipc_prefix, port_offset)
    rundir = posixpath.normpath(posixpath.join(cwd, conf.resolve(rundir))) if rundir else ""
    conf = PushpinConf(path, {}, libdir, rundir, ipc_prefix, port_offset)
    include = raw_text("global", "include")
    if include == "internal.conf":
        include = "{libdir}/internal.conf"
    include = conf.resolve(include)
    entries: dict[tuple[str, str], Entry] = {}
    missing = False
    if include:
        include = posixpath.normpath(posixpath.join(conf.directory, include))
        try:
            entries = {(e.section, e.key): e for e in parse_ini(read(include), include)}
        except OSError as exc:
            if include != posixpath.join(libdir, "internal.conf"):
                e = raw[("global", "include")]
                raise ConfigError(
                    [f"{e.where}: cannot read {include}: {exc.strerror or exc}"]
                ) from exc
            missing = True  # Pushpin's own wiring, absent when Pushpin is not installed
    entries.update(raw)
    return PushpinConf(
        path, entries, libdir, rundir, ipc_prefix, port_offset, include, include_missing=missing
    )
