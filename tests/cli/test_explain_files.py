"""``napari-vitcam explain`` with real files: nothing lost, nothing written but the named file, errors before the model.

Refusals that must come before the model is loaded are tested with a
checkpoint that cannot be loaded: had the command loaded it first, the error
would be about the checkpoint.
"""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import napari_vitcam as nv
from napari_vitcam.cli.main import main
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.testing.scans import SeriesGeometry, oblique_affine, write_ct_series, write_nifti
from napari_vitcam.volumes.geometry import permuted, world_view
from napari_vitcam.volumes.nifti import read_provenance


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("calm", "busy"), "blocks.1.norm1")
    (tmp_path / "models").mkdir()
    return nv.save_checkpoint(tmp_path / "models" / "model.safetensors", model, spec)


@pytest.fixture
def broken_checkpoint(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a checkpoint")
    return path


@pytest.fixture
def scan(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "scan.npy"
    np.save(path, np.random.default_rng(0).normal(size=(20, 24, 18)).astype(np.float32))
    return path


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def refused(capsys, argv, expected):
    before = {p: p.read_bytes() for p in argv_paths(argv) if p.is_file()}
    assert main(["explain", *map(str, argv)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert expected in err and "\n" not in err and captured.out == "", err
    assert all(p.read_bytes() == content for p, content in before.items())  # no input changed
    return err


def argv_paths(argv):
    from pathlib import Path

    return [Path(a) for a in argv if isinstance(a, os.PathLike)]


def test_the_output_may_not_be_the_input_by_name_link_or_hard_link(tmp_path, checkpoint, scan, capsys):
    os.symlink(scan, tmp_path / "data" / "alias.npy")
    os.link(scan, tmp_path / "data" / "hard.npy")
    for output in (scan, tmp_path / "data" / "alias.npy", tmp_path / "data" / "hard.npy"):
        refused(
            capsys, [checkpoint, scan, "-o", output, "--force"], "is the input scan.npy: choose another output file"
        )


def test_an_existing_output_needs_force(tmp_path, checkpoint, scan, capsys):
    out = tmp_path / "data" / "heat.npy"
    out.write_bytes(b"an earlier result")
    refused(capsys, [checkpoint, scan, "-o", out], "heat.npy exists: choose another output or pass --force")
    assert out.read_bytes() == b"an earlier result"
    assert main(["explain", str(checkpoint), str(scan), "-o", str(out), "--force"]) == 0
    assert np.load(out).shape == (20, 24, 18)
    assert strict_json(capsys.readouterr().out)["heatmap"] == str(out)


def test_the_default_output_is_refused_when_it_exists(tmp_path, checkpoint, scan, capsys):
    assert main(["explain", str(checkpoint), str(scan)]) == 0
    assert strict_json(capsys.readouterr().out)["heatmap"] == str(tmp_path / "data" / "scan.heatmap.npy")
    refused(capsys, [checkpoint, scan], "scan.heatmap.npy exists")


def test_exactly_the_named_file_is_written_and_reported(tmp_path, checkpoint, broken_checkpoint, scan, capsys):
    refused(capsys, [broken_checkpoint, scan, "-o", tmp_path / "x.out"], "cannot write a heatmap as x.out")
    out = tmp_path / "data" / "heat.nii.gz"
    before = set(os.listdir(tmp_path / "data"))
    assert main(["explain", str(checkpoint), str(scan), "-o", str(out)]) == 0
    summary = strict_json(capsys.readouterr().out)
    assert summary["heatmap"] == str(out) and summary["format"] == "nifti"
    assert set(os.listdir(tmp_path / "data")) - before == {"heat.nii.gz"}
    assert nib.load(out).shape == (20, 24, 18)


def test_output_problems_are_reported_before_the_model_is_loaded(tmp_path, broken_checkpoint, scan, capsys):
    refused(capsys, [broken_checkpoint, scan, "-o", tmp_path / "nowhere" / "heat.npy"], "the folder")
    refused(capsys, [broken_checkpoint, scan, "-o", tmp_path / "heat.out"], "end the file name with one of .npy")
    (tmp_path / "taken.npy").write_bytes(b"x")
    refused(capsys, [broken_checkpoint, scan, "-o", tmp_path / "taken.npy"], "exists")
    # and the checkpoint is the only problem left once the output is fine
    refused(capsys, [broken_checkpoint, scan, "-o", tmp_path / "fine.npy"], "broken.safetensors")
    assert not (tmp_path / "fine.npy").exists()


def test_unreadable_volumes_are_reported_before_the_model_is_loaded(tmp_path, broken_checkpoint, capsys):
    np.save(tmp_path / "objects.npy", np.array([object()], dtype=object), allow_pickle=True)
    refused(capsys, [broken_checkpoint, tmp_path / "objects.npy"], "holds Python objects, which are never unpickled")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    refused(capsys, [broken_checkpoint, tmp_path / "corrupt.npy"], "corrupt.npy is not a readable NumPy file")
    np.savez(tmp_path / "empty.npz")
    refused(capsys, [broken_checkpoint, tmp_path / "empty.npz"], "empty.npz holds no arrays")
    refused(capsys, [broken_checkpoint, tmp_path / "missing.npy"], "missing.npy does not exist")
    assert sorted(os.listdir(tmp_path)) == ["broken.safetensors", "corrupt.npy", "empty.npz", "objects.npy"]


def test_an_npz_with_several_arrays_needs_a_key(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(1)
    mask = (rng.random((20, 24, 18)) > 0.9).astype(np.float32)
    volume = rng.normal(size=(20, 24, 18)).astype(np.float32)
    np.savez(tmp_path / "case.npz", mask=mask, volume=volume)
    refused(
        capsys,
        [checkpoint, tmp_path / "case.npz"],
        "case.npz holds 2 arrays (mask, volume): choose the volume with --key NAME",
    )
    out = tmp_path / "heat.npy"
    assert main(["explain", str(checkpoint), str(tmp_path / "case.npz"), "--key", "volume", "-o", str(out)]) == 0
    assert strict_json(capsys.readouterr().out)["volume"]["shape"] == [20, 24, 18]
    expected = nv.explain_volume(nv.load_checkpoint(checkpoint), volume)
    np.testing.assert_allclose(np.load(out), expected.heatmap, atol=1e-6)
    refused(
        capsys,
        [checkpoint, tmp_path / "case.npz", "--key", "lesion", "-o", tmp_path / "h2.npy"],
        "has no array 'lesion': choose one of mask, volume",
    )


def test_nifti_in_nifti_out_keeps_the_affine_and_records_what_made_the_map(tmp_path, checkpoint, capsys):
    affine = oblique_affine((3.0, 0.8, 0.8), 15.0, flip=1, origin=(-40.0, 25.0, 12.5))
    volume = np.random.default_rng(2).normal(size=(12, 30, 28)).astype(np.float32)
    source = write_nifti(tmp_path / "scan.nii.gz", volume, affine)
    assert main(["explain", str(checkpoint), str(source), "--class", "busy"]) == 0
    summary = strict_json(capsys.readouterr().out)
    out = tmp_path / "scan.heatmap.nii.gz"
    assert summary["heatmap"] == str(out) and summary["volume"]["format"] == "nifti"
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, nib.load(source).affine, atol=1e-6)
    # the model saw the axes in world order, as napari shows the scan; the map is back in the file's order
    view = world_view(volume, nib.load(source).affine)
    assert view.order != (0, 1, 2)
    expected = nv.explain_volume(nv.load_checkpoint(checkpoint), view.array, class_idx="busy")
    np.testing.assert_allclose(written.get_fdata(dtype=np.float32), view.to_file(expected.heatmap), atol=1e-6)
    assert summary["model_input_axes"].startswith("world order")
    provenance = read_provenance(out)
    assert provenance["class_name"] == "busy" and provenance["method"] == "gradcam"
    assert provenance["checkpoint_sha256"] == {
        str(checkpoint.resolve()): nv.load_checkpoint(checkpoint).sha256[str(checkpoint.resolve())]
    }


def test_one_scan_stored_in_two_axis_orders_gives_one_heatmap_in_world_space(tmp_path, checkpoint, capsys):
    affine = oblique_affine((2.0, 0.8, 1.2), 10.0, flip=2, origin=(5.0, -3.0, 7.0))
    volume = np.random.default_rng(4).normal(size=(14, 26, 20)).astype(np.float32)
    order = (2, 0, 1)
    write_nifti(tmp_path / "a.nii", volume, affine)
    write_nifti(tmp_path / "b.nii", np.transpose(volume, order), permuted(affine, order))
    for name in ("a", "b"):
        assert main(["explain", str(checkpoint), str(tmp_path / f"{name}.nii"), "--class", "busy"]) == 0
    capsys.readouterr()
    a, b = nib.load(tmp_path / "a.heatmap.nii.gz"), nib.load(tmp_path / "b.heatmap.nii.gz")
    np.testing.assert_allclose(b.affine, permuted(a.affine, order), atol=1e-6)
    np.testing.assert_allclose(np.transpose(a.get_fdata(), order), b.get_fdata(), atol=1e-6)
    assert a.get_fdata().max() == pytest.approx(1.0)


def test_a_dicom_series_gives_a_nifti_heatmap_beside_the_folder(tmp_path, checkpoint, capsys):
    stored = np.random.default_rng(3).integers(0, 2000, size=(9, 20, 22)).astype(np.int16)
    geometry = SeriesGeometry(row_cosine=(0.0, 1.0, 0.0), column_cosine=(0.0, 0.0, -1.0), slice_spacing=3.0)
    write_ct_series(tmp_path / "series", stored, geometry, slope=1.5, intercept=-1024.0)
    assert main(["explain", str(checkpoint), str(tmp_path / "series")]) == 0
    summary = strict_json(capsys.readouterr().out)
    out = tmp_path / "series.heatmap.nii.gz"
    assert summary["heatmap"] == str(out) and summary["volume"]["modality"] == "CT"
    written = nib.load(out)
    assert written.shape == (9, 20, 22)
    np.testing.assert_allclose(written.affine, summary["volume"]["affine_ras"], atol=1e-5)
    # the map's corner voxels are the series' corner pixels as pydicom's headers place them (LPS → RAS)
    ends = sorted(geometry.slice_positions(9), key=lambda p: float(np.dot(p, geometry.normal())))[:: 9 - 1]
    row_step = geometry.pixel_spacing[0] * np.asarray(geometry.column_cosine)
    column_step = geometry.pixel_spacing[1] * np.asarray(geometry.row_cosine)
    expected = [np.asarray(p) + r * row_step + c * column_step for p in ends for r in (0, 19) for c in (0, 21)]
    expected_ras = sorted(tuple(np.round(point * [-1, -1, 1], 4)) for point in expected)
    grid = [(i, j, k) for i in (0, 8) for j in (0, 19) for k in (0, 21)]
    found = sorted(tuple(np.round((written.affine @ np.r_[index, 1.0])[:3], 4)) for index in grid)
    np.testing.assert_allclose(found, expected_ras, atol=1e-3)


def test_the_json_is_valid_even_when_a_number_is_not_finite(tmp_path, checkpoint, capsys):
    from napari_vitcam.volumes.base import json_ready

    text = json.dumps(
        json_ready({"p": {"a": float("nan"), "b": np.float32(np.inf)}, "x": np.float64(0.5)}), allow_nan=False
    )
    assert strict_json(text) == {"p": {"a": None, "b": None}, "x": 0.5}


def test_refusals_from_the_shell_are_one_line_and_exit_1(tmp_path, checkpoint, scan):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "napari_vitcam.cli.main", "explain", str(checkpoint), str(scan), "-o", str(scan)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"napari-vitcam explain: {scan} is the input scan.npy: choose another output file"
    ]
    out = scan.parent / "heat.nii"
    result = subprocess.run([*command[:-1], str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["heatmap"] == str(out) and out.is_file()


def test_a_dicom_series_can_be_answered_with_a_parametric_map(tmp_path, checkpoint, broken_checkpoint, scan, capsys):
    import highdicom as hd
    import pydicom

    refused(capsys, [broken_checkpoint, scan, "-o", tmp_path / "heat.dcm"], "written only for a DICOM series")
    stored = np.random.default_rng(6).integers(0, 2000, size=(9, 20, 22)).astype(np.int16)
    paths = write_ct_series(tmp_path / "series", stored, SeriesGeometry(), slope=1.0, intercept=-1024.0)
    out = tmp_path / "heat.dcm"
    assert main(["explain", str(checkpoint), str(tmp_path / "series"), "-o", str(out), "--class", "busy"]) == 0
    summary = strict_json(capsys.readouterr().out)
    assert summary["heatmap"] == str(out) and summary["format"] == "dicom-pm"
    image = hd.imread(out)
    assert image.FrameOfReferenceUID == pydicom.dcmread(paths[0]).FrameOfReferenceUID
    back = image.get_volume(dtype=np.float32)
    np.testing.assert_allclose(
        back.affine, summary["volume"]["affine_ras"] * np.array([[-1], [-1], [1], [1]]), atol=1e-5
    )
    assert back.array.shape == (9, 20, 22) and back.array.max() == pytest.approx(1.0)


def test_a_declared_orientation_reorients_the_scan_and_maps_back_to_the_file(
    tmp_path, checkpoint, broken_checkpoint, capsys
):
    from napari_vitcam.pipeline.frame import ModelFrame

    refused(capsys, [broken_checkpoint, tmp_path / "x.npy", "--orientation", "RAR"], "x.npy does not exist")
    np.save(tmp_path / "x.npy", np.zeros((16, 16, 16), np.float32))
    refused(capsys, [broken_checkpoint, tmp_path / "x.npy", "--orientation", "RAR"], "'RAR' is not three axis codes")
    affine = oblique_affine((2.0, 0.8, 1.1), 8.0, flip=0)
    volume = np.random.default_rng(7).normal(size=(12, 20, 16)).astype(np.float32)
    order = (1, 2, 0)
    write_nifti(tmp_path / "a.nii", volume, affine)
    write_nifti(tmp_path / "b.nii", np.transpose(volume, order), permuted(affine, order))
    for name in ("a", "b"):
        argv = ["explain", str(checkpoint), str(tmp_path / f"{name}.nii"), "--orientation", "RAS", "--class", "busy"]
        assert main(argv) == 0
        assert strict_json(capsys.readouterr().out)["model_input_axes"] == "reoriented to RAS"
    a, b = nib.load(tmp_path / "a.heatmap.nii.gz"), nib.load(tmp_path / "b.heatmap.nii.gz")
    np.testing.assert_allclose(a.affine, affine, atol=1e-6)
    np.testing.assert_allclose(np.transpose(a.get_fdata(), order), b.get_fdata(), atol=1e-6)
    expected = nv.explain_volume(
        nv.load_checkpoint(checkpoint), volume, class_idx="busy", affine=affine, frame=ModelFrame("RAS")
    )
    np.testing.assert_allclose(a.get_fdata(), expected.heatmap, atol=1e-6)


def test_no_file_of_an_input_series_is_written_over(tmp_path, broken_checkpoint, capsys):
    stored = np.zeros((4, 6, 6), np.int16)
    paths = write_ct_series(tmp_path / "series", stored, SeriesGeometry(), shuffle_seed=None)
    named = [path.rename(path.with_suffix(".dcm")) for path in paths]
    # the series is given by one of its files; another file of it is the output
    refused(capsys, [broken_checkpoint, named[0], "-o", named[2], "--force"], "is the input IM0002.dcm")


def test_the_checkpoints_frame_is_used_from_the_shell(tmp_path, capsys):
    """A spec declaring RAS and a spacing (crop or pad): the scan is reoriented and resampled; an .npy says why not."""
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec_input = InputSpec(
        1, (16, 16, 16), Normalization("zscore"), orientation="RAS", spacing=(1.5, 1.0, 2.0), fit="crop_or_pad"
    )
    spec = ModelSpec(spec_input, ("calm", "busy"), "blocks.1.norm1")
    checkpoint = nv.save_checkpoint(tmp_path / "model.safetensors", model, spec)
    affine = oblique_affine((2.0, 0.8, 1.1), 8.0, flip=0)
    volume = np.random.default_rng(8).normal(size=(12, 20, 16)).astype(np.float32)
    source = write_nifti(tmp_path / "scan.nii", volume, affine)
    assert main(["explain", str(checkpoint), str(source), "--class", "busy"]) == 0
    summary = strict_json(capsys.readouterr().out)
    assert summary["model_input_axes"] == "reoriented to RAS" and "frame_note" not in summary
    assert summary["model_frame"]["model_spacing_mm"] == [1.5, 1.0, 2.0]
    assert summary["model_frame"]["fit"] == "crop_or_pad"
    written = nib.load(tmp_path / "scan.heatmap.nii.gz")
    expected = nv.explain_volume(nv.load_checkpoint(checkpoint), volume, class_idx="busy", affine=affine)
    assert expected.preprocessing["model_spacing_mm"] == [1.5, 1.0, 2.0]
    np.testing.assert_allclose(written.get_fdata(), expected.heatmap, atol=1e-5)  # the same map, axes in another order
    np.save(tmp_path / "plain.npy", volume)
    assert main(["explain", str(checkpoint), str(tmp_path / "plain.npy")]) == 0
    note = strict_json(capsys.readouterr().out)["frame_note"]
    assert "expects RAS-oriented and 1.5×1×2 mm spacing volumes" in note and "geometry is unknown" in note


def test_nonfinite_voxels_are_refused_or_replaced_as_asked(tmp_path, checkpoint, capsys):
    volume = np.random.default_rng(9).normal(size=(16, 16, 16)).astype(np.float32)
    volume[3, 4, 5] = np.nan
    np.save(tmp_path / "nan.npy", volume)
    refused(capsys, [checkpoint, tmp_path / "nan.npy"], "1 of 4096 voxels are not finite")
    assert not (tmp_path / "nan.heatmap.npy").exists()
    assert main(["explain", str(checkpoint), str(tmp_path / "nan.npy"), "--nonfinite", "replace"]) == 0
    summary = strict_json(capsys.readouterr().out)
    heatmap = np.load(summary["heatmap"])
    assert heatmap.shape == volume.shape and np.isfinite(heatmap).all()
    replaced = np.nan_to_num(volume, nan=0.0)
    expected = nv.explain_volume(nv.load_checkpoint(checkpoint), replaced)
    np.testing.assert_allclose(heatmap, expected.heatmap, atol=1e-6)
    with pytest.raises(SystemExit):
        main(["explain", str(checkpoint), str(tmp_path / "nan.npy"), "--nonfinite", "ignore"])
