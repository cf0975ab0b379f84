"""The gripcast broker, and the contract it shares with edges.

Top level: the contract edges import (config, wire, items, errors, keys, curve, histogram)
and the sans-IO core (sequencer, history, control, ratelimit).  Folders: runtime/ (ZeroMQ/trio
bridge, HTTP/1 reader, logging, systemd), ingest/ (publish inputs and the pipeline), store/
(memory and Redis history stores), ops/ (lifecycle, reload, metrics, stats).  server.py is the
composition root: it builds the sockets from the wiring table and runs the parts.
"""
