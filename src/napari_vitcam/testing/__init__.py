"""Helpers for the tests and the benchmarks: tiny models (:mod:`.models`) and the GUI stall meter (:mod:`.stall`)."""
