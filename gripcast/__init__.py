"""gripcast's composition roots: the CLI, the process runner and the demo origin."""

__version__ = "0.1.0"
