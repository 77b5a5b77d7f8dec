"""A batch on a two-worker Dask cluster: the same heatmaps as one by one, the table, metrics, reruns, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.batch.cohort import CLASSES, Cohort, make_cohort

from napari_vitcam.batch import explain_many, run_batch
from napari_vitcam.batch.ledger import CASES_FOLDER, hold_lock
from napari_vitcam.core.errors import CheckpointError, InputError
from napari_vitcam.evaluation.localisation import mask_scores
from napari_vitcam.models.checkpoint import load_checkpoint
from napari_vitcam.pipeline.explain import explain_volume
from napari_vitcam.volumes.geometry import world_view
from napari_vitcam.volumes.registry import read_volume


def records(outdir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (outdir / CASES_FOLDER).glob("*.json")}


def one_by_one(checkpoint: Path, scan: Path):
    """What ``explain_volume`` gives for one scan, the way ``napari-vitcam explain`` calls it."""
    loaded = load_checkpoint(checkpoint)
    volume = read_volume(scan)
    view = world_view(volume.array, volume.affine)
    result = explain_volume(loaded, view.array, device="cpu")
    return result, view.to_file(result.heatmap), volume


def test_a_batch_gives_the_heatmaps_of_explain_volume_one_by_one(cohort: Cohort, dask_client):
    out = cohort.root / "out"
    frame = explain_many(cohort.checkpoint, cohort.scans, out, client=dask_client, device="cpu")

    assert len(frame) == 5 and frame["path"].is_unique
    good = frame[frame["status"] == "ok"]
    assert len(good) == 4
    for row in good.to_dict("records"):
        result, expected, volume = one_by_one(cohort.checkpoint, Path(row["path"]))
        written = read_volume(out / row["heatmap"])
        np.testing.assert_allclose(written.array, expected, rtol=1e-5, atol=1e-6)
        assert row["predicted"] == result.predicted_name
        assert row["explained_class"] == result.class_name
        assert row[f"prob_{CLASSES[0]}"] == pytest.approx(float(result.probabilities[0]), abs=1e-6)
        assert row["target_layer"] == "blocks.1.norm1" and row["method"] == "gradcam"
        assert row["time_total_s"] > 0 and row["time_explain_s"] > 0
        if volume.affine is None:
            assert row["heatmap"].endswith(".heatmap.npy")
        else:  # NIfTI with the scan's geometry
            assert row["heatmap"].endswith(".heatmap.nii.gz")
            np.testing.assert_allclose(written.affine, volume.affine, atol=1e-5)
    # both workers took cases, and each loaded the model once
    ledger = records(out)
    computed = [r for r in ledger.values() if r["status"] == "ok"]
    loads = [r["worker"] for r in computed if r["model_loaded_here"]]
    assert len(loads) == len(set(loads)) == len({r["worker"] for r in computed})
    # the parquet table holds the same rows
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["path"] for r in table] == list(frame["path"])


def test_a_corrupt_file_is_an_error_row_not_a_failed_batch(cohort: Cohort, dask_client):
    run = run_batch(cohort.checkpoint, cohort.scans, cohort.root / "out", client=dask_client, device="cpu")
    (broken,) = [r for r in run.rows if r["status"] == "error"]
    assert broken["path"] == str(cohort.corrupt.resolve())
    assert "broken.nii.gz" in broken["error"] and "\n" not in broken["error"]
    assert broken["heatmap"] is None and broken["predicted"] is None
    assert run.failed == 1 and run.computed == 4 and run.skipped == 0
    assert not any((cohort.root / "out" / "heatmaps").glob("broken*"))


def test_a_csv_with_labels_and_masks_gives_metrics(cohort: Cohort, dask_client):
    out = cohort.root / "out"
    frame = explain_many(cohort.checkpoint, cohort.table, out, client=dask_client, device="cpu", table_format="csv")
    assert list(frame["status"]) == ["ok"] * 4
    for row in frame.to_dict("records"):
        heatmap = read_volume(out / row["heatmap"]).array
        scores = mask_scores(heatmap, cohort.masks[row["path"]], tolerance=4.0)  # half a token (patch 8)
        assert row["iou"] == pytest.approx(scores.iou)
        assert row["energy"] == pytest.approx(scores.energy)
        assert row["pointing_tolerant"] == scores.pointing_tolerant
        assert row["label"] == str(cohort.labels[row["path"]])
        assert row["correct"] == (row["predicted"] == CLASSES[cohort.labels[row["path"]]])
    assert (out / "results.csv").read_text().splitlines()[0].startswith("case,name,path")
    assert not (out / "results.parquet").exists()


def test_a_rerun_skips_finished_cases_and_retries_failed_and_changed_ones(cohort: Cohort, dask_client):
    out = cohort.root / "out"
    first = run_batch(cohort.checkpoint, cohort.scans, out, client=dask_client, device="cpu")
    before = records(out)
    np.save(cohort.scans / "scan0.npy", np.load(cohort.scans / "scan0.npy") * 2 + 1)  # changed content
    cohort.corrupt.unlink()
    fixed = cohort.scans / "broken.npy"
    np.save(fixed, np.load(cohort.scans / "scan1.npy")[::-1].copy())  # the bad scan, replaced by a good one

    second = run_batch(cohort.checkpoint, cohort.scans, out, client=dask_client, device="cpu")
    after = records(out)
    runs = {r["name"]: r["run"] for r in second.rows}
    assert second.failed == 0 and len(second.rows) == 5
    assert second.skipped == 3 and second.computed == 2
    assert runs["scan1"] == runs["scan2"] == runs["scan3"] == first.rows[0]["run"]
    assert runs["scan0"] != first.rows[0]["run"] and runs["broken"] != first.rows[0]["run"]
    for name in ("scan1", "scan2", "scan3"):
        case = next(r["case"] for r in second.rows if r["name"] == name)
        assert after[case] == before[case]  # not rewritten
    # another method is another setting: everything is explained again
    third = run_batch(cohort.checkpoint, cohort.scans, out, client=dask_client, device="cpu", method="hirescam")
    assert third.computed == 5 and third.skipped == 0


def test_bad_options_are_refused_before_any_scan_is_read(cohort: Cohort, dask_client, tmp_path: Path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nscan0.npy,1\n")
    with pytest.raises(InputError, match="no 'path' column"):
        run_batch(cohort.checkpoint, bad, out, client=dask_client)
    with pytest.raises(InputError, match="does not exist"):
        run_batch(cohort.checkpoint, tmp_path / "nowhere", out, client=dask_client)
    with pytest.raises(InputError, match="found no scans"):
        run_batch(cohort.checkpoint, str(tmp_path / "*.nii"), out, client=dask_client)
    with pytest.raises(InputError, match="no layer"):
        run_batch(cohort.checkpoint, cohort.scans, out, client=dask_client, target_layer="blocks.9")
    with pytest.raises(InputError, match="class"):
        run_batch(cohort.checkpoint, cohort.scans, out, client=dask_client, class_idx="tumour")
    with pytest.raises(InputError, match="parquet or csv"):
        run_batch(cohort.checkpoint, cohort.scans, out, client=dask_client, table_format="xlsx")
    with pytest.raises(InputError, match="at least 1"):
        run_batch(cohort.checkpoint, cohort.scans, out, workers=0)
    with pytest.raises(InputError, match="dask worker"):
        run_batch(cohort.checkpoint, cohort.scans, out, workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(CheckpointError):
        run_batch(tmp_path / "none.safetensors", cohort.scans, out, client=dask_client)
    assert not out.exists()  # refused before anything was written


def test_a_scan_with_nan_voxels_is_an_error_row_unless_replaced(cohort: Cohort, dask_client):
    volume = np.load(cohort.scans / "scan0.npy")
    volume[3, 4, 5] = np.nan
    np.save(cohort.scans / "scan0.npy", volume)
    out = cohort.root / "out"
    inputs = [cohort.scans / "scan0.npy", cohort.scans / "scan1.npy"]
    first = run_batch(cohort.checkpoint, inputs, out, client=dask_client, device="cpu")
    assert [r["status"] for r in first.rows] == ["error", "ok"]
    assert "nonfinite" in first.rows[0]["error"] and "NaN" in first.rows[0]["error"]
    again = run_batch(cohort.checkpoint, inputs, out, client=dask_client, device="cpu", nonfinite="replace")
    assert [r["status"] for r in again.rows] == ["ok", "ok"] and again.computed == 2  # a setting changed
    assert np.isfinite(np.load(out / again.rows[0]["heatmap"])).all()


def test_a_second_run_on_the_same_folder_is_refused_while_one_runs(cohort: Cohort, dask_client):
    out = cohort.root / "out"
    out.mkdir()
    with hold_lock(out), pytest.raises(InputError, match="another batch is writing"):
        run_batch(cohort.checkpoint, cohort.scans, out, client=dask_client)


def test_a_dicom_series_folder_is_one_case_with_a_nifti_heatmap(tmp_path: Path, dask_client):
    from napari_vitcam.demo.volumes import make_volume
    from napari_vitcam.testing.scans import write_ct_series

    cohort = make_cohort(tmp_path / "cohort", count=1)
    stored = np.round(make_volume(7, 16).volume * 100).astype(np.int16)
    series = cohort.scans / "series"
    write_ct_series(series, stored)
    frame = explain_many(cohort.checkpoint, cohort.scans, tmp_path / "out", client=dask_client, device="cpu")
    row = frame[frame["name"] == "series"].iloc[0]
    assert row["status"] == "ok" and row["heatmap"] == "heatmaps/series.heatmap.nii.gz"
    _, expected, volume = one_by_one(cohort.checkpoint, series)
    written = read_volume(tmp_path / "out" / row["heatmap"])
    np.testing.assert_allclose(written.array, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-4)


def test_two_scans_with_one_name_get_two_heatmaps(tmp_path: Path, dask_client):
    one = make_cohort(tmp_path / "one", count=1)
    two = make_cohort(tmp_path / "two", count=1)
    inputs = [one.scans / "scan0.npy", two.scans / "scan0.npy"]
    frame = explain_many(one.checkpoint, inputs, tmp_path / "out", client=dask_client, device="cpu")
    assert frame["heatmap"].is_unique and len(frame) == 2
    assert all((tmp_path / "out" / h).is_file() for h in frame["heatmap"])
