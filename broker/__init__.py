"""The gripcast broker, and the contract it shares with edges (config, wire format, errors)."""
