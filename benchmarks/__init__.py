"""Benchmark helpers and the benchmark command (``python benchmarks/run.py``); not part of the package."""
