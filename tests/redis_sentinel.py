"""A Redis Sentinel deployment of real processes for integration tests: a master, replicas and
sentinels (``redis-server --sentinel``) on 127.0.0.1, ports chosen at run time.

    with SentinelGroup(replicas=1, sentinels=3) as g:   # replication up, sentinels agreed
        url = g.url()                                   # redis+sentinel://.../gcmaster/0
        g.kill_master()                                 # SIGKILL the current master
        g.wait_failover(old)                            # a replica promoted, all sentinels agree
        g.rejoin(killed)                                # back, as a replica of the new master

The implementation lives in ``bench.redisfaults`` (``python -m bench chaos`` uses it too, and
bench never imports tests); this module keeps the tests' import path.
"""

from __future__ import annotations

from bench.redisfaults import (
    MASTER_NAME,
    SentinelGroup,
    _myid,
    _pairs,
    command,
    info,
    wait,
)

__all__ = ["MASTER_NAME", "SentinelGroup", "_myid", "_pairs", "command", "info", "wait"]
