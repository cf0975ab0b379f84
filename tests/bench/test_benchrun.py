"""``run_group``: a bench command that overruns its time is stopped with everything it started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.bench.benchrun import run_group
from tests.helpers import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (not yet reaped by init) is gone too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_a_command_past_its_time_is_stopped_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, "-c", code], timeout=2)
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), 10, "the command's child outlived it")


def test_a_command_in_time_gives_its_output():
    done = run_group([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], timeout=20)
    assert (done.returncode, done.stdout) == (3, "out\n")
