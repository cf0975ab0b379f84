"""The gripcast edge: stateless trio processes that hold client connections.

Sans-IO protocol modules: ``routes`` (Pushpin routes file), ``headers`` (GRIP header
parameters, response cleaning), ``grip`` (instruct -> ``Hold``), ``hub`` (channel ->
sessions), ``tracker`` (per-channel sequence tracking), ``timers`` (coarse timer buckets).
I/O modules: ``sig`` (Grip-Sig), ``origin`` (HTTP client to the origin), ``httpserver``
(client connections), ``brokerlink`` (the only zmq importer), ``deliver`` (the hot path),
``server`` (composition root: ``main(cfg, index)``).
"""
