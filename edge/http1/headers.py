"""HTTP header helpers shared by the edge (sans-IO).

* GRIP header parameter parsing, exactly as Pushpin's ``core/httpheaders.cpp``: list headers
  are split on commas outside double quotes (all occurrences combined); each element is
  ``first; name=value; name="quoted \\"value\\""; flag`` where ``first`` runs up to the first
  ``;`` and is trimmed.
* Response header cleaning for what the client sees (reference 2.3.9).
* (Reason phrases are ``broker.items.status_reason``: Pushpin's table, shared with the broker.)

Headers are lists of ``(name, value)`` pairs of ``str`` (latin-1 decoded); names keep their
case, comparisons are case-insensitive.
"""

from __future__ import annotations

from broker.errors import RemoteProtocolError

Headers = list[tuple[str, str]]
Param = tuple[str, "str | None"]


class ParamError(RemoteProtocolError):
    """A header element could not be parsed (unterminated quote or escape)."""


def header_get(headers: Headers, name: str) -> str | None:
    """The first value of ``name`` (case-insensitive), or None."""
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


def header_get_all(headers: Headers, name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def split_list(value: str) -> list[str]:
    """Split a list header value on commas outside double quotes; elements are trimmed.

    Raises ParamError on an unterminated quote or a trailing escape inside quotes.
    """
    parts: list[str] = []
    start = 0
    in_quote = False
    n = 0
    size = len(value)
    while n < size:
        c = value[n]
        if in_quote:
            if c == "\\":
                n += 1
                if n >= size:
                    raise ParamError("escape at end of value")
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == ",":
            parts.append(value[start:n].strip())
            start = n + 1
        n += 1
    if in_quote:
        raise ParamError("unterminated quote")
    if start < size:
        parts.append(value[start:].strip())
    return parts


def parse_params(value: str, parse_first: bool = False) -> list[tuple[str, str]]:
    """Parse one element into ``[(first, ""), (name, value), ...]``.

    With ``parse_first`` the first element is itself a ``name=value`` pair (Grip-Set-Meta).
    Flags (no ``=``) get the value "".  Raises ParamError on a bad quoted value.
    """
    out: list[tuple[str, str]] = []
    start = 0
    size = len(value)
    if not parse_first:
        at = value.find(";")
        if at != -1:
            out.append((value[:at].strip(), ""))
            start = at + 1
        else:
            out.append((value.strip(), ""))
            start = size
    while start < size:
        eq = value.find("=", start)
        semi = value.find(";", start)
        at = min(x for x in (eq, semi, size) if x != -1)
        if at == size:
            out.append((value[start:].strip(), ""))
            break
        var = value[start:at].strip()
        if value[at] == ";":
            out.append((var, ""))
            start = at + 1
            continue
        at += 1
        if at < size and value[at] == '"':
            at += 1
            buf = []
            while True:
                if at >= size:
                    raise ParamError("unterminated quote")
                c = value[at]
                if c == "\\":
                    if at + 1 >= size:
                        raise ParamError("escape at end of value")
                    buf.append(value[at + 1])
                    at += 2
                elif c == '"':
                    at += 1
                    break
                else:
                    buf.append(c)
                    at += 1
            val = "".join(buf)
            semi = value.find(";", at)
            start = semi + 1 if semi != -1 else size
        else:
            semi = value.find(";", at)
            if semi != -1:
                val = value[at:semi].strip()
                start = semi + 1
            else:
                val = value[at:].strip()
                start = size
        out.append((var, val))
    return out


def param_get(params: list[tuple[str, str]], name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive, skipping the first element)."""
    lname = name.lower()
    for k, v in params[1:]:
        if k.lower() == lname:
            return v
    return None


def all_params(
    headers: Headers, name: str, parse_first: bool = False
) -> list[list[tuple[str, str]]]:
    """Every element of every ``name`` header, parsed; unparsable elements are skipped
    (as Pushpin's ``getAllAsParameters`` does)."""
    out = []
    for value in header_get_all(headers, name):
        try:
            elements = split_list(value)
        except ParamError:
            continue
        for element in elements:
            try:
                out.append(parse_params(element, parse_first))
            except ParamError:
                continue
    return out


# -- response cleaning -----------------------------------------------------------------------

HOP_BY_HOP = frozenset(
    [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    ]
)


def clean_response_headers(
    headers: Headers, *, expose: list[str] | None = None, keep_length: bool = False
) -> Headers:
    """What the client may see of an origin response (reference 2.3.9).

    Drops every ``Grip-*`` header and the hop-by-hop headers; drops ``Content-Length`` unless
    ``keep_length`` (the caller recomputes or re-frames); with ``expose`` (Grip-Expose-Headers)
    keeps only the listed headers.
    """
    allowed = {e.lower() for e in expose} if expose else None
    out = []
    for k, v in headers:
        lk = k.lower()
        if lk.startswith("grip-") or lk in HOP_BY_HOP:
            continue
        if lk == "content-length" and not keep_length:
            continue
        if allowed is not None and lk not in allowed:
            continue
        out.append((k, v))
    return out
