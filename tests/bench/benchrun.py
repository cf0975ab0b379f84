"""Running ``python -m bench`` from a test: the command, its output file and its JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_group(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True)`` from the repository root, in a
    session of its own: past ``timeout`` the whole group (the bench and what it started:
    brokers, edges, Redis nodes, load processes) gets SIGTERM, then SIGKILL after 5 s, and
    ``TimeoutExpired`` is raised; nothing it started outlives the test."""
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_bench(
    out: Path, *args: str, timeout: float = 110
) -> tuple[dict, subprocess.CompletedProcess]:
    """``python -m bench ARGS --out OUT`` from the repository root; returns (its JSON record,
    the finished process).  Fails, with the end of its output, when it wrote no JSON."""
    proc = run_group([sys.executable, "-m", "bench", *args, "--out", str(out)], timeout)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


def gripcast_run(
    out: Path, *args: str, timeout: float = 110
) -> tuple[dict, subprocess.CompletedProcess]:
    """``run_bench`` for a run against gripcast: (its run record, the process); the run must
    have gone through (``ok``)."""
    record, proc = run_bench(out, *args, timeout=timeout)
    run = record["runs"]["gripcast"]
    assert run["ok"], run.get("error")
    return run, proc
