"""``bench.connload``: its arguments, the copies' command lines and the report's arithmetic
(no sockets, no compiler: the run against a real edge is in test_bench_connload_edge.py)."""

from __future__ import annotations

import pytest

from bench import connload, sendfloor, wakecost
from bench.cli import build_parser
from bench.connload import LoadSpec, argv_for, check_spec, parse_args, percentile_us, report
from bench.handshakes import rate_order, rate_summary


def _out(**kw) -> dict:
    base = {
        "mode": "tls1.2",
        "resume": False,
        "concurrency": 8,
        "started": 0,
        "completed": 0,
        "in_flight_at_end": 0,
        "resumed": 0,
        "wall_s": 2.0,
        "cpu_user_s": 0.0,
        "cpu_sys_s": 0.0,
        "bucket_us": 10,
        "errors": {"connect": 0, "handshake": 0, "write": 0, "read": 0, "closed": 0, "timeout": 0},
        "first_error": {},
        "handshake_hist": [],
        "total_hist": [],
    }
    base.update(kw)
    return base


def test_parse_args_defaults_to_a_stream_request():
    spec = parse_args(["--port", "8443", "--mode", "tls1.3", "--resume", "--procs", "2"])
    assert (spec.port, spec.mode, spec.resume, spec.procs) == (8443, "tls1.3", True, 2)
    assert spec.request == connload.STREAM_REQUEST and spec.until == "[open]"
    bare = parse_args(["--port", "80", "--request", "none", "--src", "127.0.0.2,127.0.0.3"])
    assert bare.request == "" and bare.until == "\r\n\r\n"
    assert bare.sources == ("127.0.0.2", "127.0.0.3")


def test_parse_args_refuses_bad_combinations(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--port", "80", "--mode", "plain", "--resume"])
    assert "resume: only with a TLS mode" in capsys.readouterr().err


def test_check_spec_lists_every_problem():
    problems = check_spec(
        LoadSpec(
            port=0, mode="ssl3", procs=4, concurrency=2, duration_s=0, request="GET /%s%d", until=""
        )
    )
    text = "\n".join(problems)
    for part in ("port 0", "mode 'ssl3'", "concurrency 2", "duration_s 0", "until", "request"):
        assert part in text
    assert check_spec(LoadSpec(port=1, request=connload.STREAM_REQUEST)) == []


def test_argv_splits_concurrency_and_conns_over_the_copies_and_escapes():
    spec = LoadSpec(port=9000, mode="tls1.2", concurrency=10, conns=7, procs=3, request="A\r\n")
    argvs = argv_for(spec, "/bin/connload")
    assert [a for argv in argvs for a in argv if a.startswith("--concurrency")] == [
        "--concurrency=4",
        "--concurrency=3",
        "--concurrency=3",
    ]
    assert [a for argv in argvs for a in argv if a.startswith("--conns")] == [
        "--conns=3",
        "--conns=2",
        "--conns=2",
    ]
    assert "--request=A\\r\\n" in argvs[0] and "--until=\\r\\n\\r\\n" in argvs[0]
    assert not any(a == "--resume" for a in argvs[0])
    limited = argv_for(LoadSpec(port=1, procs=2, concurrency=2, max_errors=100), "/x")
    assert all("--max-errors=50" in argv for argv in limited)


def test_percentile_is_the_upper_edge_of_the_bucket_holding_it():
    hist = {0: 50, 9: 49, 100: 1}  # 50 under 10 us, 49 in 90-100 us, 1 in 1000-1010 us
    assert percentile_us(hist, 0.50, 10) == 10.0
    assert percentile_us(hist, 0.51, 10) == 100.0
    assert percentile_us(hist, 0.99, 10) == 100.0
    assert percentile_us(hist, 1.0, 10) == 1010.0
    assert percentile_us({}, 0.5, 10) is None
    assert percentile_us({3: 1}, 0.5, 10) == 40.0


def test_report_merges_copies():
    a = _out(
        completed=300,
        wall_s=2.0,
        cpu_user_s=0.2,
        cpu_sys_s=0.1,
        resumed=5,
        errors={"connect": 1, "timeout": 2},
        first_error={"timeout": "no answer"},
        handshake_hist=[[10, 200], [20, 100]],
        total_hist=[[30, 300]],
    )
    b = _out(
        completed=100,
        wall_s=1.9,
        cpu_user_s=0.05,
        cpu_sys_s=0.05,
        errors={"timeout": 1},
        first_error={"timeout": "other", "read": "SSL_read"},
        handshake_hist=[[20, 100]],
        total_hist=[[99, 100]],
    )
    r = report([a, b])
    assert (r.completed, r.wall_s, r.per_s, r.procs, r.concurrency) == (400, 2.0, 200.0, 2, 16)
    assert r.errors["timeout"] == 3 and r.errors["connect"] == 1 and r.errors["read"] == 0
    assert r.first_error == {"timeout": "no answer", "read": "SSL_read"}
    assert r.resumed == 5
    # handshakes: 200 in bucket 10 (100-110 us), 200 in bucket 20: p50 110 us, p99 210 us
    assert (r.handshake_p50_ms, r.handshake_p99_ms) == (0.11, 0.21)
    assert (r.total_p50_ms, r.total_p99_ms) == (0.31, 1.0)
    assert r.client_cpu_s == 0.4 and r.client_cpu_ms_per_conn == 1.0 and r.client_util == 0.2
    assert "400 conns" in r.line() and "200/s" in r.line()


def test_report_of_nothing_done():
    r = report([_out()])
    assert r.completed == 0 and r.per_s == 0.0 and r.client_cpu_ms_per_conn is None
    assert r.handshake_p50_ms is None
    with pytest.raises(ValueError):
        report([])


@pytest.mark.parametrize("module", [sendfloor, wakecost])
def test_the_c_helpers_say_what_to_do_without_a_compiler(module, tmp_path, monkeypatch):
    src = tmp_path / module.SOURCE.name
    src.write_text(module.SOURCE.read_text() + "\n/* another version */\n")
    monkeypatch.setattr(connload.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(connload.BuildError, match="gcc"):
        module.build(src, tmp_path / "cache")


def test_ready_binary_prints_the_problems_or_the_build_error(capsys):
    assert connload.ready_binary("x", [], lambda: "/bin/true") == "/bin/true"
    assert connload.ready_binary("x", ["--a: bad", "--b: worse"], lambda: "/bin/true") is None
    assert capsys.readouterr().out == "bench x: --a: bad\nbench x: --b: worse\n"

    def broken() -> str:
        raise connload.BuildError("bench's x needs a C compiler (apt-get install gcc)")

    assert connload.ready_binary("x", [], broken) is None
    assert "apt-get install gcc" in capsys.readouterr().out


def test_build_error_names_the_missing_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(connload.shutil, "which", lambda name: None)
    with pytest.raises(connload.BuildError, match="C compiler"):
        connload.build(cache=tmp_path)


def test_handshakes_flags_for_connload():
    args = build_parser().parse_args(
        ["handshakes", "--client", "connload", "--duration", "3", "--concurrency", "16"]
    )
    assert (args.client, args.duration, args.concurrency, args.procs) == ("connload", 3, 16, None)


def test_rate_order_alternates():
    assert rate_order(["gripcast", "pushpin"], 0) == ["gripcast", "pushpin"]
    assert rate_order(["gripcast", "pushpin"], 1) == ["pushpin", "gripcast"]
    assert rate_order(["gripcast"], 1) == ["gripcast"]


def test_rate_summary_medians_and_ratios():
    def row(target, case, per_s, server, client=0.1):
        return {
            "target": target,
            "case": case,
            "per_s": per_s,
            "server_cpu_ms_per_conn": server,
            "client_cpu_ms_per_conn": client,
        }

    rows = [
        row("gripcast", "plain", 1000, 0.5),
        row("gripcast", "plain", 3000, 0.7),
        row("gripcast", "plain", 2000, 0.6),
        row("gripcast", "tls1.2", 500, 1.2),
        row("pushpin", "plain", 400, 2.0),
        row("pushpin", "tls1.2", 300, None),
        dict(row("pushpin", "tls1.3", 0, None), connections=0),  # refused: left out
    ]
    s = rate_summary(rows)
    assert s["gripcast"]["plain"] == {
        "per_s": 2000,
        "server_cpu_ms_per_conn": 0.6,
        "client_cpu_ms_per_conn": 0.1,
    }
    assert s["gripcast"]["tls1.2"]["rate_ratio"] == 0.25
    assert s["gripcast"]["tls1.2"]["cpu_ratio"] == 2.0
    assert s["pushpin"]["tls1.2"]["rate_ratio"] == 0.75
    assert "cpu_ratio" not in s["pushpin"]["tls1.2"]
    assert "tls1.3" not in s["pushpin"]
