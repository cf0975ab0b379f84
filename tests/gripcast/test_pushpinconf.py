"""pushpin.conf parsing and its mapping to gripcast settings, key by key (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.config import load_config
from broker.errors import ConfigError
from gripcast import pushpinconf
from gripcast.migrate import gripcast_defaults, render_toml
from gripcast.pushpinconf import RULES, load, parse_ini, translate

INTERNAL_CONF = """[proxy]
condure_in_specs=ipc://{rundir}/{ipc_prefix}condure-out
stats_spec=ipc://{rundir}/{ipc_prefix}proxy-stats
command_spec=ipc://{rundir}/{ipc_prefix}proxy-command
[handler]
proxy_stats_spec=ipc://{rundir}/{ipc_prefix}proxy-stats
"""


def files(**extra: str) -> dict[str, str]:
    return {"/usr/lib/pushpin/internal.conf": INTERNAL_CONF, **extra}


def conf_of(text: str, fs: dict[str, str] | None = None, path: str = "/etc/pushpin/pushpin.conf"):
    fs = files(**{path: text}) if fs is None else {**fs, path: text}

    def read(p: str) -> str:
        try:
            return fs[p]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", p) from None

    return load(path, read, cwd="/home/me")


def one(section: str, key: str, value: str, head: str = "") -> pushpinconf.Translation:
    return translate(conf_of(f"{head}[{section}]\n{key}={value}\n"), gripcast_defaults())


# -- the INI reader ----------------------------------------------------------------------------


def test_ini_values_quotes_lists_comments():
    entries = parse_ini(
        '# c\n; c\n[a]\nk1 = v ; trailing\nk2=x,y , z\nk3="a,b;c"\nk4=\n[b]\nk1=2\n', "f"
    )
    got = {(e.section, e.key): (e.value, e.line) for e in entries}
    assert got == {
        ("a", "k1"): ("v", 4),
        ("a", "k2"): (("x", "y", "z"), 5),
        ("a", "k3"): ("a,b;c", 6),
        ("a", "k4"): ("", 7),
        ("b", "k1"): ("2", 9),
    }


def test_ini_bad_line_names_file_and_line():
    with pytest.raises(ConfigError) as exc:
        parse_ini("[a]\nk=1\njunk\n[b\n", "/x/pushpin.conf")
    assert exc.value.problems == [
        "/x/pushpin.conf:3: expected key=value or [section], not 'junk'",
        "/x/pushpin.conf:4: malformed section header '[b'",
    ]


def test_include_libdir_substitutions_and_precedence():
    conf = conf_of(
        "[global]\ninclude={libdir}/internal.conf\nrundir=run\nipc_prefix=pp-\n"
        "[handler]\nstats_spec=ipc://{rundir}/{ipc_prefix}stats\n"
    )
    assert conf.include == "/usr/lib/pushpin/internal.conf"
    assert conf.rundir == "/home/me/run"  # relative to the working directory, as Pushpin
    e = conf.entries[("handler", "stats_spec")]
    assert conf.text(e) == "ipc:///home/me/run/pp-stats"
    assert ("proxy", "condure_in_specs") in conf.entries  # from the included file
    assert conf.entries[("proxy", "stats_spec")].file == "/usr/lib/pushpin/internal.conf"


def test_include_relative_to_config_dir_and_internal_conf_shorthand():
    fs = {"/etc/pp/extra.conf": "[handler]\nmessage_wait=1000\n"}
    conf = conf_of("[global]\ninclude=extra.conf\n", fs, path="/etc/pp/pushpin.conf")
    assert conf.include == "/etc/pp/extra.conf"
    assert conf.entries[("handler", "message_wait")].value == "1000"
    conf = conf_of("[global]\ninclude=internal.conf\n", files())
    assert conf.include == "/usr/lib/pushpin/internal.conf"


def test_main_file_overrides_include():
    fs = {"/etc/pp/extra.conf": "[handler]\nmessage_wait=1000\nid_cache_ttl=5\n"}
    conf = conf_of(
        "[global]\ninclude=extra.conf\n[handler]\nmessage_wait=2000\n", fs, "/etc/pp/pushpin.conf"
    )
    t = translate(conf, gripcast_defaults())
    assert t.settings["message_wait_s"] == 2.0 and t.settings["id_cache_ttl_s"] == 5.0


def test_missing_include_refused_unless_it_is_pushpins_internal_conf():
    with pytest.raises(ConfigError) as exc:
        conf_of("[global]\ninclude=/nowhere/x.conf\n", {})
    assert "pushpin.conf:2: [global] include: cannot read /nowhere/x.conf" in str(exc.value)
    conf = conf_of("[global]\ninclude={libdir}/internal.conf\n", {})
    assert conf.include_missing
    assert "not installed" in (pushpinconf.internal_note(translate(conf)) or "")


def test_port_offset_applies_to_tcp_specs_and_http_port_not_client_port():
    t = translate(
        conf_of(
            "[global]\nport_offset=100\n[runner]\nhttp_port=7999\n[handler]\n"
            "push_in_spec=tcp://127.0.0.1:5560\npush_in_sub_specs=tcp://127.0.0.1:5562\n"
            "command_spec=tcp://127.0.0.1:5563\npush_in_http_port=5561\n"
        ),
        gripcast_defaults(),
    )
    s = t.settings
    assert (s["push_in_port"], s["sub_in_port"], s["command_port"], s["http_port"]) == (
        5660,
        5662,
        5663,
        5661,
    )
    assert s["client_port"] == 7999  # Pushpin's runner does not offset http_port
    assert s["port_offset"] == 100


def test_resolve_offsets_every_tcp_port():
    conf = conf_of("[global]\nport_offset=7\n")
    assert conf.resolve("tcp://127.0.0.1:5560") == "tcp://127.0.0.1:5567"
    assert conf.resolve("tcp://*:1,tcp://[::1]:2") == "tcp://*:8,tcp://[::1]:9"
    assert conf.resolve("ipc:///run/x") == "ipc:///run/x"


# -- the table, key by key ---------------------------------------------------------------------

# (section, key, value, expected settings)
MAPPED: list[tuple[str, str, str, dict[str, Any]]] = [
    ("global", "port_offset", "3", {"port_offset": 3}),
    ("global", "stats_connection_ttl", "30", {"stats_connection_ttl_s": 30}),
    ("global", "stats_connection_send", "false", {"stats_connection_send": False}),
    ("runner", "http_port", "7999", {"client_port": 7999}),
    ("runner", "http_port", "127.0.0.1:8000", {"client_addr": "127.0.0.1", "client_port": 8000}),
    ("runner", "http_port", "[::1]:8000", {"client_addr": "::1", "client_port": 8000}),
    ("runner", "https_ports", "", {}),
    ("runner", "local_ports", "", {}),
    ("runner", "log_level", "2", {}),
    ("runner", "log_level", "3", {"log_level": "debug"}),
    ("runner", "log_level", "1", {"log_level": "warning"}),
    ("runner", "log_level", "0", {"log_level": "error"}),
    ("runner", "client_buffer_size", "16384", {"client_header_bytes": 16384}),
    ("runner", "client_maxconn", "50000", {}),
    ("runner", "allow_compression", "true", {"allow_compression": True}),
    ("runner", "services", "condure,pushpin-proxy,pushpin-handler", {}),
    ("proxy", "routesfile", "routes", {"routes_file": "/etc/pushpin/routes"}),
    ("proxy", "routesfile", "/srv/r", {"routes_file": "/srv/r"}),
    ("proxy", "debug", "true", {"debug": True}),
    ("proxy", "debug", "false", {}),
    ("proxy", "auto_cross_origin", "true", {"auto_cross_origin": True}),
    ("proxy", "accept_x_forwarded_protocol", "true", {"accept_x_forwarded_protocol": True}),
    ("proxy", "set_x_forwarded_protocol", "true", {"set_x_forwarded_protocol": "true"}),
    ("proxy", "set_x_forwarded_protocol", "proto-only", {}),
    (
        "proxy",
        "x_forwarded_for",
        "truncate:0,append",
        {"x_forwarded_for": ("truncate:0", "append")},
    ),
    ("proxy", "x_forwarded_for", "", {}),
    ("proxy", "x_forwarded_for_trusted", "append", {"x_forwarded_for_trusted": ("append",)}),
    ("proxy", "orig_headers_need_mark", "a,b", {"orig_headers_need_mark": ("a", "b")}),
    ("proxy", "accept_pushpin_route", "true", {"accept_pushpin_route": True}),
    ("proxy", "cdn_loop", "pushpin", {"cdn_loop": "pushpin"}),
    ("proxy", "log_from", "true", {"log_from": True}),
    ("proxy", "log_user_agent", "true", {"log_user_agent": True}),
    ("proxy", "sig_iss", "me", {"sig_iss": "me"}),
    ("proxy", "sig_key", "s3cret", {"sig_key": "s3cret"}),
    ("proxy", "sig_key", "base64:aGk=", {"sig_key": "base64:aGk="}),
    ("proxy", "sig_key", "file:keys/k.pem", {"sig_key": "file:/etc/pushpin/keys/k.pem"}),
    ("proxy", "upstream_key", "", {}),
    (
        "runner",
        "https_ports",
        "443,127.0.0.1:8443",
        {"https_port": ("443", "127.0.0.1:8443"), "tls_certs_dir": "/etc/pushpin/runner/certs"},
    ),
    ("proxy", "upstream_key", "s3cret", {"upstream_key": "s3cret"}),
    ("proxy", "upstream_key", "file:up.pem", {"upstream_key": "file:/etc/pushpin/up.pem"}),
    ("proxy", "max_open_requests", "-1", {}),
    ("proxy", "prometheus_port", "9480", {"edge_metrics_port": 9480}),
    ("proxy", "prometheus_prefix", "", {}),
    (
        "handler",
        "push_in_spec",
        "tcp://127.0.0.1:6000",
        {"push_in_port": 6000, "publish_bind": "127.0.0.1"},
    ),
    ("handler", "push_in_spec", "tcp://*:6000", {"push_in_port": 6000, "publish_bind": "0.0.0.0"}),
    (
        "handler",
        "push_in_sub_specs",
        "tcp://127.0.0.1:6002",
        {"sub_in_port": 6002, "publish_bind": "127.0.0.1"},
    ),
    (
        "handler",
        "push_in_sub_spec",
        "tcp://127.0.0.1:6002",
        {"sub_in_port": 6002, "publish_bind": "127.0.0.1"},
    ),
    ("handler", "push_in_sub_connect", "false", {}),
    (
        "handler",
        "command_spec",
        "tcp://127.0.0.1:6003",
        {"command_port": 6003, "publish_bind": "127.0.0.1"},
    ),
    ("handler", "push_in_http_addr", "0.0.0.0", {"http_bind": "0.0.0.0"}),
    ("handler", "push_in_http_port", "6001", {"http_port": 6001}),
    ("handler", "push_in_http_max_headers_size", "10000", {}),
    ("handler", "push_in_max_headers_size", "10000", {}),
    ("handler", "push_in_http_max_body_size", "1000000", {}),
    ("handler", "push_in_max_body_size", "1000000", {}),
    ("handler", "stats_spec", "tcp://127.0.0.1:6010", {"stats_spec": "tcp://127.0.0.1:6010"}),
    (
        "handler",
        "stats_spec",
        "ipc://{rundir}/{ipc_prefix}stats",
        {"stats_spec": "ipc:///run/pushpin/pushpin-stats"},
    ),
    ("handler", "stats_format", "json", {"stats_format": "json"}),
    ("handler", "stats_format", "tnetstring", {}),
    ("handler", "stats_report_interval", "5", {"stats_report_interval_s": 5.0}),
    ("handler", "stats_subscription_ttl", "30", {"stats_subscription_ttl_s": 30}),
    ("handler", "prometheus_port", "127.0.0.1:9470", {"metrics_port": 9470}),
    ("handler", "prometheus_port", "", {}),
    ("handler", "message_wait", "2500", {"message_wait_s": 2.5}),
    ("handler", "id_cache_ttl", "60", {}),
    ("handler", "id_cache_ttl", "10", {"id_cache_ttl_s": 10.0}),
    ("handler", "message_rate", "2500", {}),
    ("handler", "message_hwm", "25000", {}),
    ("handler", "message_block_size", "", {}),
    ("handler", "connection_subscription_max", "20", {}),
    ("handler", "subscription_linger", "60", {}),
    ("handler", "update_on_first_subscription", "false", {"update_on_first_subscription": False}),
    ("handler", "ipc_file_mode", "", {}),
    ("handler", "share_all", "false", {}),
    ("handler", "state_spec", "", {}),
]

# settings every translation has when these keys are absent (Pushpin's code defaults)
ABSENT = {"sig_key": "", "set_x_forwarded_protocol": "false", "id_cache_ttl_s": 0.0}


@pytest.mark.parametrize(("section", "key", "value", "expected"), MAPPED)
def test_mapped_key(section: str, key: str, value: str, expected: dict[str, Any]):
    head = "[global]\nrundir=/run/pushpin\n"
    t = one(section, key, value, head)
    absent = {
        k: v for (sec, pkey), (k, v) in pushpinconf.ABSENT.items() if (sec, pkey) != (section, key)
    }
    assert t.settings == {**absent, **expected}
    for k in expected:
        assert t.sources[k].key == key and t.sources[k].line == 4


# (section, key, value, words of the refusal)
REFUSED = [
    ("global", "port_offset", "x", "is not an integer"),
    ("global", "stats_connection_ttl", "0", "out of range"),
    ("global", "stats_connection_send", "maybe", "not true or false"),
    ("runner", "http_port", "7999,8000", "2 listeners"),
    ("runner", "http_port", "localhost:http", "is not [addr:]port"),
    ("runner", "https_ports", "localhost:https", "is not [addr:]port"),
    ("runner", "local_ports", "/run/x.sock", "no unix socket listener"),
    ("runner", "log_level", "loud", "a log level is a number"),
    ("runner", "client_buffer_size", "10", "out of range"),
    ("runner", "services", "condure", "no pushpin-proxy or pushpin-handler"),
    ("proxy", "set_x_forwarded_protocol", "yes", "is not true, false or proto-only"),
    ("proxy", "max_open_requests", "100", "does not cap open origin requests"),
    ("proxy", "prometheus_port", "ipc:///run/p", "TCP only"),
    ("handler", "push_in_spec", "ipc:///run/in", "tcp://host:port only"),
    ("handler", "push_in_sub_specs", "tcp://127.0.0.1:1,tcp://127.0.0.1:2", "one SUB"),
    ("handler", "push_in_sub_connect", "true", "cannot connect"),
    ("handler", "push_in_http_port", "0", "out of range"),
    ("handler", "push_in_http_max_headers_size", "20000", "10000 bytes"),
    ("handler", "push_in_http_max_body_size", "5", "1000000 bytes"),
    ("handler", "stats_spec", "inproc://x", "not a tcp:// or ipc://"),
    ("handler", "stats_format", "xml", "not tnetstring or json"),
    ("handler", "stats_report_interval", "0", "always sends reports"),
    ("handler", "message_wait", "soon", "not an integer"),
    ("handler", "message_rate", "100", "no publish rate limiter"),
    ("handler", "message_hwm", "10", "no publish rate limiter"),
    ("handler", "message_block_size", "1024", "no block counts"),
    ("handler", "connection_subscription_max", "50", "at most 20 channels"),
    ("handler", "subscription_linger", "10", "linger 60 s"),
    ("handler", "ipc_file_mode", "777", "umask"),
    ("handler", "share_all", "true", "no share_all"),
    ("handler", "state_spec", "ipc://x", "no Pushpin session state"),
    ("handler", "no_such_key", "1", "not a Pushpin setting gripcast knows"),
    ("nosection", "key", "1", "not a Pushpin setting gripcast knows"),
]


@pytest.mark.parametrize(("section", "key", "value", "words"), REFUSED)
def test_refused_key(section: str, key: str, value: str, words: str):
    with pytest.raises(ConfigError) as exc:
        one(section, key, value)
    (problem,) = exc.value.problems
    assert problem.startswith(f"/etc/pushpin/pushpin.conf:2: [{section}] {key}: ")
    assert words in problem


WARNED = [
    ("runner", "logdir", "/var/log/pushpin"),
    ("runner", "condure_bin", "condure"),
    ("runner", "mongrel2_bin", "mongrel2"),
    ("runner", "m2sh_bin", "m2sh"),
    ("runner", "zurl_bin", "zurl"),
    ("runner", "services", "condure,pushpin-proxy,pushpin-handler"),
    ("proxy", "sockjs_url", "http://cdn/sockjs.js"),
    ("proxy", "updates_check", "off"),
    ("proxy", "organization_name", "acme"),
    ("proxy", "workers", "4"),
    ("proxy", "ipc_file_mode", "777"),
    ("proxy", "stats_report_interval", "10"),
    ("proxy", "stats_connections_max_ttl", "60"),
    ("proxy", "prometheus_port", "9480"),
    ("proxy", "prometheus_prefix", "pp_"),
    ("handler", "prometheus_port", "9470"),
    ("handler", "prometheus_prefix", "pp_"),
    ("handler", "message_rate", "2500"),
    ("handler", "message_hwm", "25000"),
    ("runner", "client_maxconn", "1000"),
    ("runner", "log_level", "pushpin-proxy:3,2"),
]


@pytest.mark.parametrize(("section", "key", "value"), WARNED)
def test_warned_key(section: str, key: str, value: str):
    t = one(section, key, value)
    (w,) = t.warnings
    assert str(w).startswith(f"/etc/pushpin/pushpin.conf:2: [{section}] {key}: ")


def test_every_rule_is_tested():
    tested = {(s, k) for s, k, *_ in MAPPED + REFUSED + WARNED}
    rows = {key for key, rule in RULES.items() if rule.kind not in ("internal", "loader")}
    assert rows - tested == set()


def test_internal_keys_noted_once_not_warned():
    t = translate(conf_of("[global]\ninclude={libdir}/internal.conf\n"), gripcast_defaults())
    assert t.warnings == [] and len(t.internal) == 4
    note = pushpinconf.internal_note(t)
    assert note is not None and note.startswith("4 keys of Pushpin's internal wiring")


def test_publish_hosts_must_agree():
    with pytest.raises(ConfigError) as exc:
        translate(
            conf_of(
                "[handler]\npush_in_spec=tcp://127.0.0.1:5560\ncommand_spec=tcp://0.0.0.0:5563\n"
            )
        )
    assert "pushpin.conf:3: [handler] command_spec: host '0.0.0.0' differs" in str(exc.value)


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        translate(
            conf_of("[proxy]\ncdn_loop=\nbogus=1\n[runner]\nhttps_ports=x:y\nhttp_port=1,2\n")
        )
    assert len(exc.value.problems) == 3


# -- the shipped config and the round trip ------------------------------------------------------

DEBIAN = Path("/etc/pushpin/pushpin.conf")


def test_debian_pushpin_conf_gives_pushpins_defaults():
    """The config Debian's pushpin package ships."""
    if not DEBIAN.exists():
        pytest.skip("Debian's pushpin package is not installed")
    t = translate(conf_of(DEBIAN.read_text()), gripcast_defaults())
    cfg = load_config(env={}, file_values=t.settings, file_label="pushpin.conf")
    assert cfg.port("client_port") == 7999
    assert [cfg.port(k) for k in ("push_in_port", "http_port", "sub_in_port", "command_port")] == [
        5560,
        5561,
        5562,
        5563,
    ]
    assert (cfg.sig_iss, cfg.sig_key, cfg.routes_file) == (
        "pushpin",
        "changeme",
        "/etc/pushpin/routes",
    )
    assert cfg.stats_spec == "ipc:///var/run/pushpin/pushpin-stats"
    assert (cfg.message_wait_s, cfg.id_cache_ttl_s, cfg.stats_format) == (5.0, 60.0, "tnetstring")
    assert {w.entry.key for w in t.warnings} == {
        "services",
        "logdir",
        "condure_bin",
        "mongrel2_bin",
        "m2sh_bin",
        "zurl_bin",
        "sockjs_url",
        "updates_check",
        "organization_name",
        "message_rate",
        "message_hwm",
    }


def test_migrated_toml_gives_the_same_config(tmp_path):
    text = (
        "[global]\ninclude={libdir}/internal.conf\nport_offset=10\nstats_connection_ttl=30\n"
        "[runner]\nhttp_port=127.0.0.1:8123\nclient_buffer_size=16384\nlog_level=3\n"
        '[proxy]\nroutesfile=routes\nsig_iss="my iss"\nsig_key=base64:c2VjcmV0\n'
        "set_x_forwarded_protocol=proto-only\n"
        "[handler]\npush_in_spec=tcp://127.0.0.1:5560\npush_in_http_port=5561\n"
        "stats_spec=tcp://127.0.0.1:7000\nstats_format=json\nmessage_wait=1500\n"
        "id_cache_ttl=90\nstats_report_interval=3\nprometheus_port=9470\n"
    )
    t = translate(conf_of(text), gripcast_defaults())
    direct = load_config(env={}, file_values=t.settings, file_label="pushpin.conf")
    toml = tmp_path / "gripcast.toml"
    toml.write_text(render_toml(t))
    migrated = load_config(str(toml), env={})
    assert migrated == direct
    assert direct.port("push_in_port") == 5570 and direct.port("http_port") == 5571
    assert direct.port("client_port") == 8123 and direct.client_addr == "127.0.0.1"
    assert direct.port("edge_pub_port") == 5574  # gripcast's own ports follow port_offset
    assert (direct.message_wait_s, direct.id_cache_ttl_s) == (1.5, 90.0)
    assert direct.stats_format == "json" and direct.stats_spec == "tcp://127.0.0.1:7010"
    assert "# from [handler] message_wait (line 19" in toml.read_text()


def test_every_key_is_in_the_migration_guide():
    guide = (Path(__file__).resolve().parents[2] / "docs/migrating-from-pushpin.md").read_text()
    missing = [
        f"[{s}] {k}"
        for (s, k), rule in RULES.items()
        if rule.kind != "internal" and f"`{k}`" not in guide
    ]
    assert missing == []
