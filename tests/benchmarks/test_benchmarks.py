"""The benchmark code measures what it says: checked on hand-made cases and tiny sizes.

These are not timed tests: no assertion depends on how fast anything ran.
"""

import math

import numpy as np
import pytest
import torch

from benchmarks import measure
from benchmarks import run as bench

TINY = {"img_size": 16, "patch_size": 8, "width": 16, "depth": 2, "heads": 2, "num_classes": 2}
CPU = torch.device("cpu")


# ----------------------------------------------------------------- peak placement


def test_plateau_centred_on_the_patch_centre_is_zero_offset():
    volume = np.zeros((16, 16, 16), dtype=np.float32)
    volume[7:9, 7:9, 7:9] = 1.0  # the two voxels either side of the centre, on every axis
    assert np.allclose(measure.peak_centroid(volume), [7.5, 7.5, 7.5])
    assert measure.peak_offset(volume, (0, 0, 0), (16, 16, 16)) == pytest.approx(0.0)


def test_single_voxel_peak_offset_is_its_distance_to_the_patch_centre():
    volume = np.zeros((8, 8, 8), dtype=np.float32)
    volume[4, 3, 1] = 2.0
    volume[0, 0, 0] = 1.0  # lower values elsewhere do not move the peak
    # token (1, 0, 0) with 4-voxel cells: centre at index (5.5, 1.5, 1.5)
    expected = math.dist((4, 3, 1), (5.5, 1.5, 1.5))
    assert measure.peak_offset(volume, (1, 0, 0), (4, 4, 4)) == pytest.approx(expected)


def test_patch_centre_follows_a_resized_output():
    # 16 input voxels shown as 32: token 1 of cell 4 is centred at input 6 = output 12 = index 11.5
    centre = measure.patch_centre((1, 1, 1), (4, 4, 4), (16, 16, 16), (32, 16, 8))
    assert np.allclose(centre, [11.5, 5.5, 2.5])


def test_a_map_without_a_positive_peak_is_refused():
    with pytest.raises(ValueError):
        measure.peak_centroid(np.zeros((2, 2, 2)))


def test_hot_token_offsets_for_each_method():
    # zoom's default grid aligns corners: output voxel u reads input 3u/15, so token 1 peaks at
    # voxel 5, half a voxel from its patch centre 5.5 on every axis
    offsets = bench.hot_token_offsets((4, 4, 4), (16, 16, 16), (1, 1, 1), CPU)
    assert offsets["smooth"] == pytest.approx(0.0)
    assert offsets["patch"] == pytest.approx(0.0)
    assert offsets["zoom"] == pytest.approx(math.sqrt(3) * 0.5)


def test_zoom_to_gives_the_requested_shape():
    out = measure.zoom_to(measure.hot_token_map((2, 3, 4), (1, 2, 3)), (6, 9, 8))
    assert out.shape == (6, 9, 8) and out.dtype == np.float32


# --------------------------------------------------------------------- timing


def test_interleaved_warms_up_and_rotates_the_order():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = measure.interleaved(variants, rounds=3, warmup=1)
    assert calls == list("abcabcbcacab")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_ratio_is_taken_round_by_round():
    ratio = measure.Ratio.of([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])
    assert (ratio.median, ratio.low, ratio.high, ratio.rounds) == (2.0, 1.0, 3.0, 3)
    assert ratio.text() == "2.00 (range 1.00-3.00, 3 rounds)"
    assert measure.Ratio.of([4.0], [2.0]).text(0, "x") == "2x"
    with pytest.raises(ValueError):
        measure.Ratio.of([1.0], [1.0, 2.0])


# ---------------------------------------------------------------- formatting


def test_table_has_one_line_per_row_and_escapes_cells():
    rows = [
        measure.Row("1", "overhead", "a | b", "0.50", "<= 1.10", True, "x"),
        measure.Row("2", "map", "c", "5x", ">= 20x", False),
        measure.Row("4", "gui", "d", "not measured: no display"),
    ]
    lines = measure.format_table(rows).splitlines()
    assert lines[0] == "| # | benchmark | case | result | target | target met | details |"
    assert len(lines) == 2 + len(rows)
    assert all(line.count(" | ") == len(measure.COLUMNS) - 1 for line in [lines[0], *lines[2:]])
    assert "a \\| b" in lines[2] and "| yes |" in lines[2]
    assert "| **no** |" in lines[3] and "| - | - |" in lines[4]


def test_units():
    assert measure.fmt_seconds(2.5e-4) == "250 µs"
    assert measure.fmt_seconds(0.0123) == "12.3 ms"
    assert measure.fmt_seconds(3.0) == "3.00 s"
    assert measure.fmt_bytes(512) == "512 B"
    assert measure.fmt_bytes(3 * 2**20) == "3.00 MiB"
    assert measure.shape_text((64, 64, 64)) == "64^3"
    assert measure.shape_text((512, 512, 256)) == "512x512x256"


def test_machine_description_names_the_essentials():
    info = measure.machine_description()
    for key in ("date", "cpu", "logical cores", "memory", "torch", "gpu"):
        assert info[key]
    assert "threads" in info["torch"]


def test_memory_readings_are_plausible():
    assert measure.current_rss() > 0
    measure.reset_peak_rss()
    block = np.ones(8 * 2**20, dtype=np.uint8)  # 8 MiB touched
    assert measure.peak_rss() >= measure.current_rss() - 2**20
    del block


# --------------------------------------------------------------- rows, tiny


def test_overhead_rows_on_a_tiny_vit():
    source = bench.ModelSource("tiny", TINY)
    rows = bench.overhead_rows([source], rounds=1, device=CPU)
    assert [r.case.rsplit("target ", 1)[1] for r in rows] == ["blocks.1.norm1 (recommended)", "blocks.0.norm1"]
    for row in rows:
        assert row.row == "1" and row.met in (True, False)
        assert float(row.result) > 0
        assert "forward+backward" in row.details and "voxel map" in row.details


def test_overhead_baseline_leaves_the_model_usable():
    loaded = bench.ModelSource("tiny", TINY).load()
    assert loaded.spec.target_layer == "blocks.1.norm1"
    assert loaded.spec.input.spatial_size == (16, 16, 16)


def test_voxel_map_rows_on_a_tiny_case():
    rows = bench.voxel_map_rows([((4, 4, 4), (16, 16, 16))], rounds=1, device=CPU)
    assert [r.case for r in rows] == ["4^3 -> 16^3, smooth on cpu", "4^3 -> 16^3, patch on cpu"]
    zoom_offset = f"zoom {math.sqrt(3) * 0.5:.2f}"  # see test_hot_token_offsets_for_each_method
    for row, mode in zip(rows, ("smooth", "patch"), strict=False):
        assert row.result.endswith("x faster") and row.met in (True, False)
        assert f"token (2, 2, 2): {mode} 0.00, " in row.details
        assert f"token (1, 1, 1): {mode} 0.00, {zoom_offset}" in row.details


def test_end_to_end_row_runs_in_a_fresh_process():
    source = bench.ModelSource("tiny", TINY)
    job = {
        "source": {"label": "tiny", "config": TINY, "checkpoint": None},
        "shape": [20, 24, 12],
        "device": "cpu",
        "rounds": 1,
        "threads": 1,
    }
    report = bench.e2e_in_subprocess(job, timeout=120)
    assert report["shape"] == [20, 24, 12] and report["volume_bytes"] == 20 * 24 * 12 * 4
    assert report["rss_peak"] >= report["rss_before"] > 0
    assert len(report["warm_s"]) == 1 and {"forward", "backward", "upsample"} <= set(report["timings"])
    row = bench.e2e_row(report, source, ram=2**40)
    assert row.row == "3" and row.met is True and "20x24x12" in row.case and "peak RSS" in row.details


def test_end_to_end_failure_becomes_a_row(monkeypatch):
    def fail(job, timeout=0):
        raise RuntimeError("killed")

    monkeypatch.setattr(bench, "e2e_in_subprocess", fail)
    rows = bench.e2e_rows(bench.ModelSource("tiny", TINY), [(8, 8, 8)], ["cpu"], 1, {"cuda": "no GPU"})
    assert [r.result for r in rows] == ["not measured: no GPU", "failed: killed"]
    assert rows[1].met is False


def test_demo_source_falls_back_to_the_stand_in(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "demo_checkpoint_path", lambda: tmp_path / "missing.safetensors")
    source = bench.demo_source()
    assert source.checkpoint is None and source.config == bench.STAND_IN_DEMO
    assert "stand-in" in source.label and "width 96, depth 4, heads 4" in source.label


def test_demo_source_says_why_a_broken_checkpoint_was_not_used(monkeypatch, tmp_path):
    broken = tmp_path / "demo_vit.safetensors"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(bench, "demo_checkpoint_path", lambda: broken)
    source = bench.demo_source()
    assert source.checkpoint is None and "shipped checkpoint not loadable" in source.label


# ------------------------------------------------------------------ row 4, CLI


def test_gui_row_without_a_display(monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(bench.sys, "platform", "linux")
    row = bench.gui_stall_row()
    assert row.row == "4" and row.result.startswith("not measured: no display")


def test_gui_row_reports_the_widget_measurement(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    jobs = []

    def child(flag, job, timeout=0):
        jobs.append((flag, job))
        return {
            "shape": job["shape"],
            "run_longest_s": 0.0421,
            "run_duration_s": 3.0,
            "run_ticks": 250,
            "interval_s": 0.01,
            "load_longest_s": 0.2,
            "startup_longest_s": 0.09,
        }

    monkeypatch.setattr(bench, "child_in_subprocess", child)
    row = bench.gui_stall_row(source=bench.ModelSource("tiny", TINY), shape=(32, 32, 32))
    assert jobs[0][0] == "--gui-child" and jobs[0][1]["shape"] == [32, 32, 32]
    assert (row.row, row.result, row.met) == ("4", "42 ms", True)
    assert "32^3" in row.case and "loaded: 200 ms" in row.details and "before: 90 ms" in row.details
    slow = child("--gui-child", {"shape": [8, 8, 8]}) | {"run_longest_s": 0.5}
    assert bench.gui_row(slow, bench.ModelSource("t")).met is False


def test_gui_row_failure_is_not_measured(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")

    def child(flag, job, timeout=0):
        raise RuntimeError("the benchmark process failed (exit 1): boom")

    monkeypatch.setattr(bench, "child_in_subprocess", child)
    row = bench.gui_stall_row(source=bench.ModelSource("tiny", TINY), quick=True)
    assert row.result == "not measured: the benchmark process failed (exit 1): boom" and "128^3" in row.case


def test_rows_option_is_validated():
    assert bench.parse_args(["--rows", "3,1"]).row_list == (1, 3)
    with pytest.raises(SystemExit):
        bench.parse_args(["--rows", "5"])


def test_command_prints_machine_and_table(capsys, monkeypatch):
    monkeypatch.setattr(
        bench, "gui_stall_row", lambda quick=False, threads=None: measure.Row("4", "GUI responsiveness", "x", "y")
    )
    assert bench.main(["--quick", "--rows", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Command: `python benchmarks/run.py --quick --rows 4 --device cpu`" in out
    assert "- cpu: " in out and "| # | benchmark |" in out and "| 4 | GUI responsiveness |" in out
