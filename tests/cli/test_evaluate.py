"""``napari-vitcam evaluate`` over real files, with a model whose answer is known."""

import csv

import numpy as np
import pytest
import torch

from napari_vitcam.cli.main import main
from napari_vitcam.models.checkpoint import load_checkpoint
from napari_vitcam.pipeline.explain import explain_volume
from napari_vitcam.testing.models import OneRegionClassifier


@pytest.fixture
def reader_file(tmp_path):
    """The one-region model as a whole pickled module (loaded with --trust)."""
    path = tmp_path / "reader.pt"
    torch.save(OneRegionClassifier(), path)
    return path


def write_cases(folder, count=2, *, mask_of=None):
    model = OneRegionClassifier()
    volumes, masks = folder / "volumes", folder / "masks"
    volumes.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    for seed in range(count):
        np.save(volumes / f"case{seed}.npy", model.bright_input(seed=seed)[0, 0].numpy())
        mask = model.region().numpy().astype(np.uint8) if mask_of is None else mask_of(seed)
        np.save(masks / f"case{seed}.npy", mask)
    return volumes, masks


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def evaluate(checkpoint, volumes, masks, output, *extra):
    argv = ["evaluate", str(checkpoint), "--trust", "--volumes", str(volumes), "--masks", str(masks)]
    return main([*argv, "-o", str(output), "--class", "1", "--method", "hirescam", "--target", "embed", *extra])


def test_a_model_that_reads_one_region_points_there_and_beats_random(tmp_path, reader_file, capsys):
    volumes, masks = write_cases(tmp_path)
    output = tmp_path / "results.csv"
    assert evaluate(reader_file, volumes, masks, output, "--baseline", "mean") == 0
    rows = read_rows(output)
    assert [r["case"] for r in rows] == ["case0", "case1"]
    for row in rows:
        assert row["pointing_strict"] == "1" and row["pointing_tolerant"] == "1" and row["peak_distance"] == "0"
        assert row["deletion_beats_random"] == "yes" and row["insertion_beats_random"] == "yes"
        assert float(row["deletion_auc"]) < float(row["deletion_random_auc"])
        assert row["baseline"] == "mean" and row["method"] == "hirescam" and row["target_layer"] == "embed"
        assert row["tolerance"] == "2" and row["distance_unit"] == "voxels"  # half a 4-voxel patch
        assert row["randomization_survives"] == "no" and row["randomization_steps"].startswith("head:")
    out = capsys.readouterr().out
    assert "2 case(s)" in out and "strict 1.000" in out and "beats random on 2/2" in out


def test_the_occlusion_map_is_compared_in_the_csv_and_the_summary(tmp_path, reader_file, capsys):
    volumes, masks = write_cases(tmp_path, count=1)
    output = tmp_path / "results.csv"
    extra = ("--baseline", "mean", "--no-randomization", "--compare", "occlusion")
    assert evaluate(reader_file, volumes, masks, output, *extra) == 0
    (row,) = read_rows(output)
    header = list(row)
    at = header.index("insertion_beats_random")
    assert header[at + 1 : at + 3] == ["deletion_auc_occlusion", "insertion_auc_occlusion"]
    assert float(row["deletion_auc_occlusion"]) < float(row["deletion_random_auc"])
    assert float(row["insertion_auc_occlusion"]) > float(row["insertion_random_auc"])
    assert "occlusion map for comparison: deletion AUC" in capsys.readouterr().out


def test_the_csv_agrees_with_a_hand_computation(tmp_path, reader_file):
    volumes, masks = write_cases(tmp_path, count=1)
    output = tmp_path / "results.csv"
    assert evaluate(reader_file, volumes, masks, output, "--no-randomization") == 0
    (row,) = read_rows(output)
    loaded = load_checkpoint(reader_file, trust=True)
    heatmap = explain_volume(
        loaded, np.load(volumes / "case0.npy"), target_layer="embed", class_idx=1, method="hirescam", device="cpu"
    ).heatmap.astype(np.float64)
    region = np.load(masks / "case0.npy").astype(bool)
    assert float(row["energy"]) == pytest.approx(heatmap[region].sum() / heatmap.sum(), rel=1e-5)
    ious = [((heatmap >= t) & region).sum() / ((heatmap >= t) | region).sum() for t in np.unique(heatmap)]
    assert float(row["iou"]) == pytest.approx(max(ious), rel=1e-5)
    assert row["voxels"] == str(region.sum()) and row["randomization_survives"] == ""


def test_labels_are_scored_one_row_each(tmp_path, reader_file):
    def two_labels(seed):
        mask = OneRegionClassifier().region().numpy().astype(np.int16)
        mask[0:2, 0:2, 0:2] = 2  # a corner the model never reads
        return mask

    volumes, masks = write_cases(tmp_path, count=1, mask_of=two_labels)
    output = tmp_path / "results.csv"
    assert evaluate(reader_file, volumes, masks, output, "--no-randomization") == 0
    rows = read_rows(output)
    assert [(r["label"], r["pointing_strict"]) for r in rows] == [("1", "1"), ("2", "0")]
    assert float(rows[1]["peak_distance"]) > 0


def test_nifti_cases_measure_distances_in_mm(tmp_path, reader_file):
    nibabel = pytest.importorskip("nibabel")
    model = OneRegionClassifier()
    (tmp_path / "v").mkdir()
    (tmp_path / "m").mkdir()
    # 2 mm voxels stored in world order (S, P, L along the file's axes): napari and the model see the array as saved
    affine = np.array([[0, 0, -2.0, 0], [0, -2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    volume = model.bright_input()[0, 0].numpy()
    nibabel.save(nibabel.Nifti1Image(volume, affine), tmp_path / "v" / "scan.nii.gz")
    nibabel.save(nibabel.Nifti1Image(model.region().numpy().astype(np.uint8), affine), tmp_path / "m" / "scan.nii.gz")
    output = tmp_path / "results.csv"
    assert evaluate(reader_file, tmp_path / "v", tmp_path / "m", output, "--no-randomization") == 0
    (row,) = read_rows(output)
    assert row["distance_unit"] == "mm" and row["tolerance"] == "4"
    assert row["pointing_strict"] == "1"


def test_problems_are_one_line_before_any_model_is_loaded(tmp_path, capsys):
    missing_checkpoint = tmp_path / "never-read.pt"  # every check below fails before the model is read
    volumes, masks = write_cases(tmp_path)
    output = tmp_path / "results.csv"

    def error(*extra, volumes=volumes, masks=masks):
        assert evaluate(missing_checkpoint, volumes, masks, output, *extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("napari-vitcam evaluate: ")
        assert not output.exists()
        return err[0]

    (masks / "case1.npy").unlink()
    message = error()
    assert "no mask" in message and "case1" in message
    np.save(masks / "case1.npy", np.ones((8, 8, 8), np.uint8))
    message = error()
    assert "shape (8, 8, 8)" in message and "case1" in message
    np.save(masks / "case1.npy", np.zeros((16, 16, 16), np.uint8))
    assert "empty" in error()
    np.save(masks / "case1.npy", np.full((16, 16, 16), 0.5, np.float32))
    assert "non-integer" in error()
    np.save(masks / "case1.npy", np.ones((16, 16, 16), np.uint8))
    assert "needs --reference" in error("--baseline", "reference")
    assert "does not exist" in error(masks=tmp_path / "nowhere")
    assert "unknown method 'nope'" in error("--method", "nope")
    assert "unknown method 'nada'" in error("--compare", "nada")
    assert "name each other method once" in error("--compare", "hirescam")
    output.write_text("keep me")
    assert evaluate(missing_checkpoint, volumes, masks, output) == 1
    assert "exists: pass --force" in capsys.readouterr().err
    assert output.read_text() == "keep me"


def test_force_replaces_an_existing_output(tmp_path, reader_file):
    volumes, masks = write_cases(tmp_path, count=1)
    output = tmp_path / "results.csv"
    output.write_text("old")
    assert evaluate(reader_file, volumes, masks, output, "--force", "--no-randomization") == 0
    assert read_rows(output)[0]["case"] == "case0"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_reference_baseline_is_recorded(tmp_path, reader_file):
    volumes, masks = write_cases(tmp_path, count=1)
    reference = tmp_path / "healthy.npy"
    np.save(reference, np.zeros((16, 16, 16), np.float32))
    output = tmp_path / "results.csv"
    argv = ("--baseline", "reference", "--reference", str(reference), "--no-randomization")
    assert evaluate(reader_file, volumes, masks, output, *argv) == 0
    (row,) = read_rows(output)
    assert row["baseline"] == "reference" and row["deletion_beats_random"] == "yes"


def test_a_volume_with_nan_is_refused_before_any_model_is_loaded(tmp_path, capsys):
    volumes, masks = write_cases(tmp_path, count=3)
    broken = np.load(volumes / "case2.npy")
    broken[1, 2, 3] = np.nan
    np.save(volumes / "case2.npy", broken)
    output = tmp_path / "results.csv"
    assert evaluate(tmp_path / "never-read.pt", volumes, masks, output) == 1  # the missing checkpoint is not reached
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case 'case2'" in err[0] and "1 NaN" in err[0] and "nonfinite=replace" in err[0]
    assert not output.exists()


def test_nonfinite_replace_evaluates_a_volume_with_nan(tmp_path, reader_file):
    volumes, masks = write_cases(tmp_path, count=1)
    broken = np.load(volumes / "case0.npy")
    broken[0, 0, 0] = np.nan
    np.save(volumes / "case0.npy", broken)
    output = tmp_path / "results.csv"
    assert evaluate(reader_file, volumes, masks, output, "--no-randomization", "--nonfinite", "replace") == 0
    (row,) = read_rows(output)
    assert row["pointing_strict"] == "1" and np.isnan(np.load(volumes / "case0.npy")[0, 0, 0])  # file untouched


def test_method_auto_is_the_models_default_explainer(tmp_path):
    from napari_vitcam.demo.shipped import SHIPPED_CLS_CHECKPOINT
    from napari_vitcam.demo.volumes import make_volume
    from napari_vitcam.models.targets import method_for

    (tmp_path / "v").mkdir()
    (tmp_path / "m").mkdir()
    demo = make_volume(0)
    np.save(tmp_path / "v" / "case0.npy", demo.volume)
    np.save(tmp_path / "m" / "case0.npy", demo.mask.astype(np.uint8))
    output = tmp_path / "results.csv"
    argv = ["evaluate", str(SHIPPED_CLS_CHECKPOINT), "--volumes", str(tmp_path / "v"), "--masks", str(tmp_path / "m")]
    assert main([*argv, "-o", str(output), "--method", "auto", "--no-randomization", "--steps", "4"]) == 0
    (row,) = read_rows(output)
    expected = method_for(load_checkpoint(SHIPPED_CLS_CHECKPOINT)).method
    assert row["method"] == expected == "rollout"


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--class", "7", "class index 7 is out of range"),
        ("--class", "tumour", "unknown class 'tumour'"),
        ("--target", "nowhere", "no module named 'nowhere'"),
        ("--device", "banana", "unknown device 'banana'"),
    ],
)
def test_a_wrong_class_target_or_device_is_one_line_before_the_first_case(
    tmp_path, reader_file, capsys, option, value, expected
):
    volumes, masks = write_cases(tmp_path, count=2)
    output = tmp_path / "results.csv"
    argv = ["evaluate", str(reader_file), "--trust", "--volumes", str(volumes), "--masks", str(masks)]
    assert main([*argv, "-o", str(output), "--method", "hirescam", option, value]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-vitcam evaluate: ") and expected in err[0]
    assert "case" not in err[0]  # not a problem of one case: said before any case runs
    assert not output.exists()


@pytest.mark.parametrize("option", ["--steps", "--random-orders", "--batch-size"])
def test_a_count_below_one_names_its_option(tmp_path, capsys, option):
    volumes, masks = write_cases(tmp_path, count=1)
    assert evaluate(tmp_path / "never-read.pt", volumes, masks, tmp_path / "r.csv", option, "0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"napari-vitcam evaluate: {option} 0: give at least 1"]


def test_ctrl_c_is_one_line_and_leaves_no_output(tmp_path, reader_file):
    import signal
    import subprocess
    import sys

    volumes, masks = write_cases(tmp_path, count=40)  # far more work than the time it takes to interrupt it
    output = tmp_path / "results.csv"
    argv = [
        "evaluate",
        str(reader_file),
        "--trust",
        "--volumes",
        str(volumes),
        "--masks",
        str(masks),
        "-o",
        str(output),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_vitcam.cli.main", *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert process.stderr is not None
    seen = b""
    while b"1/40" not in seen:  # the first case has started: the model is loaded and working
        chunk = process.stderr.read(1)
        assert chunk, f"ended before the first case: {seen!r}"
        seen += chunk
    process.send_signal(signal.SIGINT)
    err = (seen + process.stderr.read()).decode()
    assert process.wait() == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "napari-vitcam evaluate: interrupted"
    assert not output.exists() and not list(tmp_path.glob(".results.csv.*"))


def test_an_output_under_a_file_is_refused_as_such(tmp_path, capsys):
    volumes, masks = write_cases(tmp_path, count=1)
    output = volumes / "case0.npy" / "results.csv"
    assert evaluate(tmp_path / "never-read.pt", volumes, masks, output) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"napari-vitcam evaluate: {volumes / 'case0.npy'} is a file, not a folder: choose another output"


def test_checking_a_cohort_keeps_none_of_its_arrays_in_memory(tmp_path):
    import tracemalloc

    from napari_vitcam.cli.evaluate import pair_cases

    volumes, masks = tmp_path / "volumes", tmp_path / "masks"
    volumes.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for index in range(8):  # 1 MiB per volume and 1/4 MiB per mask: 10 MiB if all were kept
        np.save(volumes / f"case{index}.npy", rng.normal(size=(64, 64, 64)).astype(np.float32))
        np.save(masks / f"case{index}.npy", (rng.random((64, 64, 64)) > 0.5).astype(np.uint8))
    tracemalloc.start()
    try:
        cases = pair_cases(volumes, masks)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1 << 20  # less than one volume: each case is read again when its turn comes
    assert [c.name for c in cases] == [f"case{i}" for i in range(8)] and cases[0].shape == (64, 64, 64)
    case = cases[3].read()
    np.testing.assert_array_equal(case.volume, np.load(volumes / "case3.npy"))


def test_the_volumes_folder_is_not_taken_as_its_own_masks(tmp_path, capsys):
    volumes, _ = write_cases(tmp_path, count=1)
    np.save(volumes / "case0.npy", (np.load(volumes / "case0.npy") * 1000).astype(np.int16))  # CT-like integers
    assert evaluate(tmp_path / "never-read.pt", volumes, volumes, tmp_path / "r.csv") == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"napari-vitcam evaluate: --masks names the --volumes folder {volumes}: give the folder of the label masks"
    )
