"""Running ``python -m bench`` from a test: the command, its output file and its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_bench(
    out: Path, *args: str, timeout: float = 110
) -> tuple[dict, subprocess.CompletedProcess]:
    """``python -m bench ARGS --out OUT`` from the repository root; returns (its JSON record,
    the finished process).  Fails, with the end of its output, when it wrote no JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
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
