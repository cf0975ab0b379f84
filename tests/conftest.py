import gc
import os

import pytest

import _speedups
from tests.helpers import MISSING


@pytest.fixture(params=["compiled", "pure"])
def twins(request):
    """A namespace of one _speedups twin set; every speedups test runs against both."""
    compiled = request.param == "compiled"
    try:
        framing = _speedups.twin("framing", compiled)
        sendmany = _speedups.twin("sendmany", compiled)
        wsframe = _speedups.twin("wsframe", compiled)
        items = _speedups.twin("items", compiled)
        tnet = _speedups.twin("tnetstring", compiled)
        deliver = _speedups.twin("deliver", compiled)
        fanout = _speedups.twin("fanout", compiled)
    except ImportError:
        if os.environ.get("GRIPCAST_REQUIRE_SPEEDUPS") == "1":
            raise
        pytest.skip(MISSING + "the compiled twins are not built (pip install . builds them)")

    class NS:
        pass

    ns = NS()
    ns.kind = request.param
    for mod in (framing, sendmany, wsframe, items, tnet, fanout, deliver):
        for name in dir(mod):
            if not name.startswith("_"):
                setattr(ns, name, getattr(mod, name))
    return ns


# -- a skip for a missing component fails the test command ----------------------------------


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under GRIPCAST_REQUIRE_ALL=1 (scripts/test), a test skipped because this machine lacks a
    component (its reason starts with ``tests.helpers.MISSING``) fails instead: a suite that
    passes by skipping what it cannot run proves nothing about it."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("GRIPCAST_REQUIRE_ALL") != "1":
        return
    reason = _skip_reason(report)
    if MISSING in reason:
        report.outcome = "failed"
        report.longrepr = (
            f"{reason.removeprefix('Skipped: ')}\nGRIPCAST_REQUIRE_ALL=1 "
            "(scripts/test): every component the tests need must be installed"
        )


@pytest.fixture(autouse=True)
def _collect_after_integration_tests(request):
    """Collect garbage after each integration test, so that a socket or file it left open is
    reported (ResourceWarning, an error here) against that test, not a later one."""
    yield
    if (
        request.node.get_closest_marker("integration") is not None
        or os.environ.get("GRIPCAST_GC_EACH_TEST") == "1"
    ):  # a debugging aid: charge every test
        gc.collect()


# -- shards: scripts/test runs each pass as several pytest processes side by side ----------


def _shard_spec(config) -> tuple[int, int] | None:
    """``GRIPCAST_TEST_SHARD=I/N`` (1 <= I <= N): this process runs shard I of N."""
    spec = os.environ.get("GRIPCAST_TEST_SHARD", "").strip()
    if not spec:
        return None
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise pytest.UsageError(f"GRIPCAST_TEST_SHARD={spec!r}: want I/N with 1 <= I <= N")
    return index, count


def pytest_collection_modifyitems(config, items):
    """Under ``GRIPCAST_TEST_SHARD=I/N``, keep the tests of every N-th test file (the files
    sorted by path, starting at the I-th): the N shards of one collection hold every test
    exactly once, a file's tests stay together (its module fixtures are started once), and a
    new file joins a shard by itself.  The others are reported as deselected."""
    shard = _shard_spec(config)
    if shard is None:
        return
    index, count = shard
    files = sorted({str(item.path) for item in items})
    mine = {f for k, f in enumerate(files) if k % count == index - 1}
    keep = [item for item in items if str(item.path) in mine]
    drop = [item for item in items if str(item.path) not in mine]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_report_header(config):
    shard = _shard_spec(config)
    return f"shard {shard[0]} of {shard[1]} (GRIPCAST_TEST_SHARD)" if shard else None
