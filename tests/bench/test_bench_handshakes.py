"""``python -m bench handshakes``: its flags, client contexts and summary (no sockets; the
measurement itself runs real targets and is in bench/RESULTS.md, not in the suite)."""

from __future__ import annotations

import ssl

from bench.cli import build_parser
from bench.handshakes import CASES, _client_context, summary


def test_flags():
    args = build_parser().parse_args(
        ["handshakes", "--target", "pushpin", "--request", "--conns", "50", "--cases", "plain"]
    )
    assert (args.target, args.request, args.conns, args.cases) == ("pushpin", True, 50, "plain")
    defaults = build_parser().parse_args(["handshakes"])
    assert defaults.target == "both" and not defaults.request and defaults.repeat == 1


def test_client_contexts_pin_the_version_and_skip_verification():
    for case in CASES[1:]:
        ctx = _client_context(case)
        want = ssl.TLSVersion.TLSv1_3 if case.startswith("tls1.3") else ssl.TLSVersion.TLSv1_2
        assert ctx.minimum_version is want and ctx.maximum_version is want
        assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_summary_is_the_median_per_case_and_skips_empty_cases():
    rows = [{"case": "plain", "server_cpu_ms_per_conn": v} for v in (0.2, 0.1, 0.3)] + [
        {"case": "tls1.3", "server_cpu_ms_per_conn": None}
    ]
    assert summary({"rows": rows}) == {"plain": 0.2}
