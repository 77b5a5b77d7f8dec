"""Checkpoint formats: how each kind of file or folder becomes a model and its spec."""
