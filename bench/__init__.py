"""gripcast's load-test suite: a target cluster (gripcast or Pushpin), a built-in origin, a client
swarm and a publisher, with JSON results, plots and a side-by-side comparison.

Run ``python -m bench --help``; ``bench/README.md`` explains each scenario and its outputs.
"""
