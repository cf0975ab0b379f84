"""Routes file parsing and matching (reference 1.2)."""

from __future__ import annotations

import pytest

from broker.errors import ConfigError
from edge.routes import Target, parse_routes, strip_port, tokenize


@pytest.mark.parametrize(
    "line, sections",
    [
        ("* localhost:80", [[("*", None)], [("localhost:80", None)]]),
        (
            "*,path_beg=/a,debug 127.0.0.1:8000,sub=x,sub=y",
            [
                [("*", None), ("path_beg", "/a"), ("debug", None)],
                [("127.0.0.1:8000", None), ("sub", "x"), ("sub", "y")],
            ],
        ),
        (
            'example.com,header="X-A:b c" h:1  # comment',
            [[("example.com", None), ("header", "X-A:b c")], [("h:1", None)]],
        ),
        (r'*,prefix="a\"b\\c" h:1', [[("*", None), ("prefix", 'a"b\\c')], [("h:1", None)]]),
        ("# only a comment", []),
        ("   ", []),
        (",id=x h:1", [[("", None), ("id", "x")], [("h:1", None)]]),
        ("*,header=X:a=b h:1", [[("*", None), ("header", "X:a=b")], [("h:1", None)]]),
    ],
)
def test_tokenize(line, sections):
    assert tokenize(line) == sections


@pytest.mark.parametrize(
    "line, message",
    [
        ('*,prefix="abc h:1', "unterminated quote"),
        (r'*,prefix="a\nb" h:1', "bad escape"),
        ("*", "no targets"),
        ("*,proto=udp h:1", "proto must be http or ws"),
        ("*,path_beg= h:1", "path_beg cannot be empty"),
        ("*,bogus h:1", "unknown condition property 'bogus'"),
        ("* h:1,bogus", "unknown target property 'bogus'"),
        ("* nohost", "bad target"),
        ("* h:99999", "bad target port"),
        ("* zhttp/tcp://127.0.0.1:5000", "over ZeroMQ (zhttp) are not supported"),
        ("*,sockjs=/s h:1", "'sockjs' is not supported: SockJS"),
        ("*,sockjs_as_path=/s h:1", "'sockjs_as_path' is not supported"),
        ("*,auto_cross_origin h:1", "use aco on the route"),
        ("* h:1,client_cert=", "client_cert= needs a file path"),
        ("* h:1,client_key=k.pem", "client_key= needs client_cert="),
        ("* h:1,ipc_file_mode=600", "only applies to zhttp/ targets"),
        ("*,jsonp_mode=fancy h:1", "jsonp_mode must be basic or extended"),
        ("*,log_level=loud h:1", "log_level must be an integer"),
        ('*,jsonp_defmethod="G T" h:1', "jsonp_defmethod must be an HTTP method"),
        ("*,path_rem=x h:1", "path_rem must be an integer"),
        ("*,header=nocolon h:1", "header must be Name:value"),
    ],
)
def test_bad_lines_report_line_numbers(line, message):
    with pytest.raises(ConfigError) as ei:
        parse_routes(["# first", line])
    assert len(ei.value.problems) == 1
    assert ei.value.problems[0].startswith("routes line 2: ")
    assert message in ei.value.problems[0]


def test_every_bad_line_is_reported():
    with pytest.raises(ConfigError) as ei:
        parse_routes(["*", "* ok:1", "*,x=1 h:1"])
    assert [p.split(":")[0] for p in ei.value.problems] == ["routes line 1", "routes line 3"]


def test_route_and_target_properties():
    table = parse_routes(
        [
            "api.example,proto=http,ssl=no,path_beg=/api,id=api,sig_iss=me,sig_key=base64:AAAA,"
            "prefix=p-,as_host=internal:8080,path_rem=4,header=X-A:1,header=X-B:,debug,no_grip "
            "10.0.0.1:80,ssl,host=origin.example,sub=a,sub=b,over_http,untrusted,insecure "
            "[::1]:8080",
        ]
    )
    (r,) = table.routes
    assert (r.host, r.proto, r.ssl, r.path_beg, r.id) == (
        "api.example",
        "http",
        False,
        "/api",
        "api",
    )
    assert (r.sig_iss, r.sig_key, r.prefix, r.as_host) == (
        "me",
        "base64:AAAA",
        "p-",
        "internal:8080",
    )
    assert r.path_rem == 4 and r.debug and r.no_grip
    assert r.headers == (("X-A", "1"), ("X-B", ""))
    assert r.targets == (
        Target(
            "10.0.0.1",
            80,
            ssl=True,
            host_header="origin.example",
            subs=("a", "b"),
            over_http=True,
            untrusted=True,
            insecure=True,
        ),
        Target("::1", 8080),
    )
    assert str(r.targets[1]) == "[::1]:8080"


def test_duplicate_conditions_are_skipped_with_a_warning():
    table = parse_routes(["* a:1", "* b:2"])
    assert [t.host for t in table.routes[0].targets] == ["a"]
    assert len(table) == 1 and "duplicate" in table.warnings[0]


TABLE = [
    "* any:1",
    "*,path_beg=/api any-api:1",
    "*,path_beg=/api/v2 any-api2:1",
    "*,proto=ws ws:1",
    "*,path_beg=/s,ssl=yes tls:1",
    "*,path_beg=/s plain-s:1",
    "exact.example,path_beg=/only exact:1",
]


@pytest.mark.parametrize(
    "host, path, ws, tls, expected",
    [
        ("x.example", "/", False, False, "any"),
        ("x.example:8080", "/api/thing", False, False, "any-api"),
        ("x.example", "/api/v2/x", False, False, "any-api2"),
        ("x.example", "/api/v2/x", True, False, "ws"),  # proto beats a longer path_beg
        ("x.example", "/s/1", False, True, "tls"),
        ("x.example", "/s/1", False, False, "plain-s"),
        ("exact.example", "/only/x", False, False, "exact"),
        ("EXACT.example:80", "/only", False, False, "exact"),
        ("exact.example", "/other", False, False, None),  # exact host shadows the * rules
    ],
)
def test_matching(host, path, ws, tls, expected):
    route = parse_routes(TABLE).match(host, path, ws, tls)
    assert (route.targets[0].host if route else None) == expected


def test_no_rules_no_match_and_id_lookup():
    assert parse_routes([]).match("a", "/") is None
    table = parse_routes([",id=hidden h:1", "a.example h:2"])
    assert table.match("b.example", "/") is None
    assert table.by_id("hidden").targets[0].port == 1


@pytest.mark.parametrize(
    "route_line, path, expected",
    [
        ("*,path_beg=/ws,replace_beg=/path-a h:1", "/ws/x?y=1", "/path-a/x?y=1"),
        ("*,path_rem=4 h:1", "/api/x", "/x"),
        ("*,path_rem=4 h:1", "/api", "/"),
        ("* h:1", "/same", "/same"),
    ],
)
def test_path_rewriting(route_line, path, expected):
    assert parse_routes([route_line]).routes[0].rewrite_path(path) == expected


@pytest.mark.parametrize(
    "host, bare",
    [
        ("a.example:80", "a.example"),
        ("a.example", "a.example"),
        ("[::1]:80", "::1"),
        ("::1", "::1"),
    ],
)
def test_strip_port(host, bare):
    assert strip_port(host) == bare


def test_pushpin_route_options_are_parsed():
    t = parse_routes(
        [
            "*,id=a,aco,jsonp_mode=basic,jsonp_cb=cb,jsonp_body=b,jsonp_defcb=f,log_level=1 h:1",
            "*,path_beg=/o,orig_headers,session h:2,untrusted",
            "*,path_beg=/e,aco,jsonp_defmethod=PUT h:3",
        ]
    )
    a, o, e = t.routes
    assert a.aco and a.log_level == 1 and a.name == "a"
    assert (a.jsonp.extended, a.jsonp.callback_param, a.jsonp.body_param) == (False, "cb", "b")
    assert (a.jsonp.default_callback, a.jsonp.default_method) == ("f", "POST")
    assert o.orig_headers and o.session and o.targets[0].untrusted and o.name == "line2"
    assert e.jsonp.extended and e.jsonp.default_method == "PUT"
    # session does nothing without a state service (as in Pushpin): said at load, not silent
    assert any("line 2: session has no effect" in w for w in t.warnings)


def test_test_target_binds_to_the_edges_test_origin():
    t = parse_routes(["*,path_beg=/t/ test", "*,path_beg=/u h:1,over_http"])
    assert t.has_test_targets and str(t.routes[0].targets[0]) == "test"
    bound = t.bind_test_origin("127.0.0.1", 4321)
    assert not bound.has_test_targets
    r = bound.routes[0]
    assert (r.targets[0].host, r.targets[0].port) == ("127.0.0.1", 4321)
    assert r.rewrite_path("/t/stream?channel=x") == "/stream?channel=x"
    assert bound.routes[1] is t.routes[1]


def test_shared_id_selects_no_route():
    t = parse_routes(["*,id=x,path_beg=/a h:1", "*,id=x,path_beg=/b h:2", "*,id=y h:3"])
    assert t.by_id("x") is None
    assert t.by_id("y") is t.routes[2]
