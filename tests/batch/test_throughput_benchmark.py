"""benchmarks/batch_throughput.py measures what it says (on a tiny case; nothing here depends on speed)."""

from __future__ import annotations

from benchmarks import batch_throughput


def test_the_benchmark_prints_a_row_per_worker_count(capsys):
    assert batch_throughput.main(["--volumes", "2", "--size", "16", "--variants", "1x1,2x1", "--in-process"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 5 |")]
    assert len(rows) == 2
    assert "2 volumes of 16^3, 1 worker(s)" in rows[0] and "(x1.00)" in rows[0]
    assert "2 volumes of 16^3, 2 worker(s)" in rows[1]
    assert all("volumes/s" in row and "memory per worker" in row and "iB (peak RSS)" in row for row in rows)


def test_peak_memory_is_this_process_high_water_mark():
    import resource
    import sys

    peak = batch_throughput._peak_rss()
    assert peak >= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    assert peak > 10 * 2**20  # an interpreter with numpy and torch loaded
