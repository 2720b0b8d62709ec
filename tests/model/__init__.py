"""Model-based tests: the 2PC protocol under a simulated hostile bus (Hypothesis stateful), and a
small linearizability checker for the version-store's histories."""
