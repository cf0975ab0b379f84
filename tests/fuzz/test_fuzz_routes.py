"""Routes lines (edge/routes.py): any text is either parsed or a ConfigError listing the line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.errors import ConfigError
from edge.routes import parse_routes
from tests.fuzz.strategies import FUZZ, nasty_text, token

props = st.sampled_from(
    [
        "path_beg",
        "path_rem",
        "replace_beg",
        "prefix",
        "as_host",
        "ssl",
        "over_http",
        "sig_iss",
        "sig_key",
        "header",
        "proto",
        "no_grip",
        "debug",
        "host",
        "sub",
        "insecure",
        "id",
        "aco",
        "log_level",
        "session_header",
        "trust_connect_host",
        "x",
    ]
)
prop = st.one_of(
    st.tuples(props, st.one_of(st.none(), nasty_text)).map(
        lambda kv: kv[0] if kv[1] is None else f"{kv[0]}={kv[1]}"
    ),
    nasty_text,
)
target = st.one_of(
    st.tuples(
        st.sampled_from(["127.0.0.1", "o", "[::1]", "", "*", ":"]),
        st.one_of(st.integers(-5, 70000).map(str), nasty_text),
    ).map(lambda hp: f"{hp[0]}:{hp[1]}"),
    st.sampled_from(["zhttp/x", "test", "o:80,over_http", "x:1,host=h"]),
    token,
)


@st.composite
def lines(draw):
    cond = draw(st.one_of(st.sampled_from(["*", "example.com", ""]), token))
    cond += "".join("," + p for p in draw(st.lists(prop, max_size=4)))
    tgts = draw(st.lists(st.tuples(target, st.lists(prop, max_size=2)), max_size=3))
    return " ".join([cond] + [t + "".join("," + p for p in ps) for t, ps in tgts])


@FUZZ
@given(st.lists(st.one_of(lines(), st.text(max_size=80)), max_size=5))
def test_routes_parse_or_config_error(text_lines):
    try:
        table = parse_routes(text_lines)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("routes line ") for p in exc.problems)
        return
    for route in table.routes:
        assert route.targets
        for t in route.targets:
            # any parsed target is a concrete host and a valid port, or a named special target
            assert isinstance(t.port, int) and 0 <= t.port <= 65535
        route.rewrite_path("/some/path?x=1")
        table.match("example.com", "/x", False, False)
