"""Fixtures for the differential tests (tests/differential/harness.py)."""

from __future__ import annotations

import pytest

from tests.differential.harness import PUSHPIN_LEFT_OUT, RecordingOrigin, SystemRunner


@pytest.fixture
def origin():
    with RecordingOrigin() as o:
        yield o


@pytest.fixture
def each_system(request, tmp_path, origin):
    """``each_system(routes=..., proxy=..., handler=..., gripcast=...)``: a generator of started
    systems, gripcast first, then Pushpin when installed; see harness.py."""
    runner = SystemRunner(tmp_path, origin, request.node.nodeid)
    yield runner
    runner.stop_all()


def pytest_terminal_summary(terminalreporter):
    if PUSHPIN_LEFT_OUT:
        terminalreporter.write_line(
            f"differential: Pushpin side left out of {len(PUSHPIN_LEFT_OUT)} tests "
            "(pushpin not installed, or GRIPCAST_DIFF_PUSHPIN=0)"
        )
