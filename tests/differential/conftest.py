"""Fixtures for the differential tests (tests/differential/harness.py)."""

from __future__ import annotations

import itertools

import pytest

from tests.differential.harness import PUSHPIN_LEFT_OUT, RecordingOrigin, SystemPool, SystemRunner

_serial = itertools.count(1)


@pytest.fixture(scope="session")
def _shared_origin():
    with RecordingOrigin() as o:
        yield o


@pytest.fixture(scope="session")
def _system_pool(tmp_path_factory):
    pool = SystemPool(tmp_path_factory.mktemp("systems"))
    yield pool
    pool.stop_all()


@pytest.fixture
def origin(_shared_origin):
    """The session's recording origin, with no answers and an empty record."""
    _shared_origin.reset()
    yield _shared_origin
    _shared_origin.reset()


@pytest.fixture
def uniq():
    """``uniq("a")``: a name (channel, path) no other test in this session uses."""
    n = next(_serial)
    return lambda base: f"{base}-{n}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def each_system(request, _system_pool, origin):
    """``each_system(routes=..., proxy=..., handler=..., gripcast=...)``: a generator of started
    systems, gripcast first, then Pushpin when installed; see harness.py."""
    runner = SystemRunner(_system_pool, origin, request.node.nodeid)
    yield runner
    runner.finish(failed=request.node.stash.get(_FAILED, True))


def pytest_terminal_summary(terminalreporter):
    if PUSHPIN_LEFT_OUT:
        terminalreporter.write_line(
            f"differential: Pushpin side left out of {len(PUSHPIN_LEFT_OUT)} tests "
            "(pushpin not installed, or GRIPCAST_DIFF_PUSHPIN=0)"
        )
