"""Passes over the block IR, each a pure function in its own module."""
