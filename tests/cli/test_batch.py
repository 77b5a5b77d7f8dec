"""``napari-vitcam batch``: a cohort on a local cluster and on a running scheduler, resumption, errors."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import distributed
from tests.batch.cohort import make_cohort

from napari_vitcam.cli.main import main


def test_batch_explains_a_folder_with_a_progress_bar_and_resumes(tmp_path: Path, capsys):
    cohort = make_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    args = ["batch", str(cohort.checkpoint), str(cohort.scans), "-o", str(out), "--workers", "2", "--in-process"]
    args += ["--device", "cpu", "--format", "csv"]
    assert main(args) == 3  # finished, with a failed case
    printed = capsys.readouterr()
    assert "5 cases: 4 explained, 0 already done, 1 failed" in printed.out
    assert f"failed: {cohort.corrupt.resolve()}" in printed.out
    assert "5/5" in printed.err and "1 failed" in printed.err  # the progress bar's last state
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in cohort.scans.iterdir())
    assert (out / "report.html").is_file()

    cohort.corrupt.unlink()
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "4 cases: 0 explained, 4 already done, 0 failed" in printed.out and printed.err == ""


def test_batch_runs_on_a_running_scheduler(tmp_path: Path, capsys):
    cohort = make_cohort(tmp_path / "cohort", count=2)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=":0", silence_logs=40
    ) as cluster:
        args = ["batch", str(cohort.checkpoint), str(cohort.table), "-o", str(tmp_path / "out")]
        code = main([*args, "--scheduler", cluster.scheduler_address, "--device", "cpu", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "3 cases: 3 explained" in printed.out and "on 2 worker(s)" in printed.out
    assert (tmp_path / "out" / "results.parquet").is_file()


def test_batch_refuses_bad_input_in_one_line_before_any_work(tmp_path: Path, capsys):
    cohort = make_cohort(tmp_path / "cohort", count=1)
    out = tmp_path / "out"
    assert main(["batch", str(cohort.checkpoint), str(tmp_path / "nowhere"), "-o", str(out), "--in-process"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("napari-vitcam batch: ") and error.count("\n") == 1 and "does not exist" in error
    args = ["batch", str(cohort.checkpoint), str(cohort.scans), "-o", str(out), "--in-process", "--method", "magic"]
    assert main(args) == 1
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert not list((out / ".cases").glob("*"))


def test_batch_on_worker_processes_loads_the_model_once_per_process(tmp_path: Path, capsys):
    """The default local cluster: worker processes, sent paths, each loading the model once."""
    import json

    cohort = make_cohort(tmp_path / "cohort", count=3)
    out = tmp_path / "out"
    args = ["batch", str(cohort.checkpoint), str(cohort.table), "-o", str(out), "--workers", "2", "--device", "cpu"]
    assert main([*args, "--no-progress"]) == 0
    assert "4 cases: 4 explained" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (out / ".cases").glob("*.json")]
    assert len(records) == 4 and all(r["status"] == "ok" and r["metrics"] for r in records)
    pids = {r["pid"] for r in records}
    assert os.getpid() not in pids  # explained in other processes
    loads = [r["pid"] for r in records if r["model_loaded_here"]]
    assert sorted(loads) == sorted(pids)  # once per process that took cases


def test_batch_method_auto_names_the_method_each_case_used_and_resumes(tmp_path: Path, capsys):
    import json

    import numpy as np

    from napari_vitcam.models.checkpoint import load_checkpoint
    from napari_vitcam.models.targets import method_for
    from napari_vitcam.pipeline.explain import explain_volume
    from napari_vitcam.volumes.geometry import world_view
    from napari_vitcam.volumes.registry import read_volume

    cohort = make_cohort(tmp_path / "cohort", count=2)
    out = tmp_path / "out"
    # two in-process workers: two threads capture attention at once, each its own
    args = ["batch", str(cohort.checkpoint), str(cohort.table), "-o", str(out), "--workers", "2", "--in-process"]
    args += ["--device", "cpu", "--format", "csv", "--no-progress", "--method", "auto"]
    assert main(args) == 0, capsys.readouterr().err
    assert "3 cases: 3 explained, 0 already done, 0 failed" in capsys.readouterr().out

    choice = method_for(load_checkpoint(cohort.checkpoint))
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        volume = read_volume(Path(row["path"]))
        view = world_view(volume.array, volume.affine)
        expected = explain_volume(load_checkpoint(cohort.checkpoint), view.array, method="auto", device="cpu")
        assert row["method"] == expected.method == choice.method != "auto"
        assert row["target_layer"] == expected.target_layer
        written = read_volume(out / row["heatmap"]).array
        np.testing.assert_allclose(written, view.to_file(expected.heatmap), rtol=1e-5, atol=1e-6)
    records = [json.loads(p.read_text()) for p in (out / ".cases").glob("*.json")]
    assert [r["method"] for r in records] == [choice.method] * 3
    assert f"auto: {choice.method}" in (out / "report.html").read_text()

    assert main(args) == 0  # the same settings: every case is skipped
    assert "3 cases: 0 explained, 3 already done, 0 failed" in capsys.readouterr().out


def test_batch_refuses_a_missing_device_in_one_line_before_any_case(tmp_path: Path, capsys):
    import torch

    cohort = make_cohort(tmp_path / "cohort", count=1)
    out = tmp_path / "out"
    base = ["batch", str(cohort.checkpoint), str(cohort.scans), "-o", str(out), "--in-process", "--no-progress"]
    missing = ["banana", f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"]
    missing += [] if torch.cuda.is_available() else ["cuda"]
    for device in missing:
        assert main([*base, "--device", device]) == 1, device
        printed = capsys.readouterr()
        assert printed.err.startswith("napari-vitcam batch: ") and printed.err.count("\n") == 1, printed.err
        assert ("banana" in printed.err) if device == "banana" else ("cpu" in printed.err), printed.err
        assert "Traceback" not in printed.err and printed.out == ""
        assert not out.exists()  # nothing written


def test_batch_on_a_running_scheduler_asks_its_workers_for_the_device(tmp_path: Path, capsys):
    import torch

    cohort = make_cohort(tmp_path / "cohort", count=1)
    out = tmp_path / "out"
    absent = f"cuda:{torch.cuda.device_count()}"  # a GPU no worker has, however many there are
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=":0", silence_logs=40
    ) as cluster:
        args = ["batch", str(cohort.checkpoint), str(cohort.scans), "-o", str(out), "--no-progress"]
        code = main([*args, "--scheduler", cluster.scheduler_address, "--device", absent])
    printed = capsys.readouterr()
    assert code == 1 and printed.err.count("\n") == 1 and "on the Dask worker" in printed.err, printed.err
    assert not list((out / ".cases").glob("*")) and not (out / "results.parquet").exists()


def test_batch_refuses_an_output_folder_mixed_with_the_input_folder(tmp_path: Path, capsys):
    cohort = make_cohort(tmp_path / "cohort", count=1)

    def listing() -> list[Path]:
        return sorted(tmp_path.rglob("*"))

    before = listing()
    cases = [
        (cohort.scans, cohort.scans, "is the input folder"),
        (cohort.scans, cohort.scans / "results", "is inside the input folder"),
        (cohort.scans, cohort.root, "is inside the output folder"),
        (cohort.table, cohort.scans, "holds the scan"),
        (str(cohort.scans / "*.npy"), cohort.scans, "holds the scan"),
    ]
    for inputs, out, problem in cases:
        assert main(["batch", str(cohort.checkpoint), str(inputs), "-o", str(out), "--in-process"]) == 1, out
        error = capsys.readouterr().err
        assert error.startswith("napari-vitcam batch: ") and error.count("\n") == 1, error
        assert problem in error and "choose an output folder" in error, error
        assert listing() == before  # nothing written, in the inputs or anywhere
