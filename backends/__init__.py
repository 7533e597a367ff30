"""maskc's backends, one module per target: ``reference`` (NumPy, the specification)."""
