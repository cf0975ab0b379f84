import os

import pytest

import _speedups


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
        fanout = _speedups.twin("fanout", compiled)
    except ImportError:
        if os.environ.get("GRIPCAST_REQUIRE_SPEEDUPS") == "1":
            raise
        pytest.skip("compiled twins are not built")

    class NS:
        pass

    ns = NS()
    ns.kind = request.param
    for mod in (framing, sendmany, wsframe, items, tnet, fanout):
        for name in dir(mod):
            if not name.startswith("_"):
                setattr(ns, name, getattr(mod, name))
    return ns
