"""NIfTI through nibabel: the voxels as stored, nibabel's affine in mm, heatmaps written with the source's affine."""

import itertools

import nibabel as nib
import numpy as np
import pytest

from napari_vitcam.testing.scans import oblique_affine, write_nifti
from napari_vitcam.volumes import VolumeFileError, read_volume, write_heatmap
from napari_vitcam.volumes.nifti import describe_heatmap, read_provenance

AFFINES = {
    "oblique-flipped-anisotropic": oblique_affine((3.0, 0.8, 0.8), 15.0, flip=1, origin=(-40.0, 25.0, 12.5)),
    "axis-aligned-LAS": np.array([[-0.9, 0, 0, 80.0], [0, 0.9, 0, -100.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]),
    "stored-z-first": np.array([[0, 0, -0.7, 50.0], [0, -0.7, 0, 40.0], [4.0, 0, 0, -20.0], [0, 0, 0, 1]]),
}


def corners(shape):
    return np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=float)


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_voxels_and_affine_are_the_files_own(tmp_path, kind):
    array = np.random.default_rng(0).normal(size=(12, 20, 16)).astype(np.float32)
    path = write_nifti(tmp_path / "scan.nii.gz", array, AFFINES[kind])
    volume = read_volume(path)
    reference = nib.load(path)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, reference.affine)
    points = corners(array.shape)
    mine = (volume.affine @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    np.testing.assert_allclose(mine, nib.affines.apply_affine(reference.affine, points), atol=1e-9)
    assert not volume.array.flags.writeable and volume.format == "nifti"
    np.testing.assert_allclose(volume.spacing, np.linalg.norm(AFFINES[kind][:3, :3], axis=0), rtol=1e-6)


def test_scaled_integer_voxels_come_back_in_real_values(tmp_path):
    stored = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, tmp_path / "ct.nii")
    volume = read_volume(tmp_path / "ct.nii")
    np.testing.assert_allclose(volume.array, stored * 2.0 - 1024.0)
    assert volume.modality == "CT" and volume.metadata["modality_from"] == "values (Hounsfield units)"


def test_an_affine_in_metres_is_given_in_mm(tmp_path):
    image = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), np.diag([0.001, 0.002, 0.003, 1.0]))
    image.header.set_xyzt_units("meter")
    nib.save(image, tmp_path / "m.nii")
    np.testing.assert_allclose(read_volume(tmp_path / "m.nii").spacing, (1.0, 2.0, 3.0))


def test_a_trailing_axis_of_length_one_is_dropped_and_4d_is_refused(tmp_path):
    write_nifti(tmp_path / "one.nii.gz", np.zeros((4, 5, 6, 1), np.float32), np.eye(4))
    assert read_volume(tmp_path / "one.nii.gz").array.shape == (4, 5, 6)
    write_nifti(tmp_path / "series.nii.gz", np.zeros((4, 5, 6, 3), np.float32), np.eye(4))
    with pytest.raises(VolumeFileError, match=r"series\.nii\.gz has shape \(4, 5, 6, 3\): give one 3D volume"):
        read_volume(tmp_path / "series.nii.gz")


def test_a_corrupt_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    with pytest.raises(VolumeFileError, match=r"broken\.nii\.gz is not a readable NIfTI file") as info:
        read_volume(tmp_path / "broken.nii.gz")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_written_heatmap_reloads_with_the_source_affine_and_its_provenance(tmp_path, suffix):
    affine = AFFINES["oblique-flipped-anisotropic"]
    heatmap = np.random.default_rng(1).random((12, 20, 16)).astype(np.float32)
    provenance = {
        "method": "gradcam",
        "class_name": "lesion",
        "target_layer": "blocks.3.norm1",
        "checkpoint_sha256": {"model.safetensors": "ab" * 32},
        "probabilities": {"lesion": float("nan")},
    }
    path = write_heatmap(tmp_path / f"heat{suffix}", heatmap, affine=affine, provenance=provenance)
    assert path == tmp_path / f"heat{suffix}" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    reloaded = nib.load(path)
    np.testing.assert_allclose(reloaded.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(reloaded.get_fdata(dtype=np.float32), heatmap)
    description = reloaded.header["descrip"].tobytes().decode()
    assert "gradcam" in description and "class=lesion" in description and "sha256=abababababab" in description
    stored = read_provenance(path)
    assert stored["target_layer"] == "blocks.3.norm1" and stored["probabilities"] == {"lesion": None}


def test_the_header_description_fits_its_80_bytes():
    text = describe_heatmap({"method": "gradcam", "class_name": "x" * 100, "target_layer": "y"})
    assert len(text.encode()) <= 80 and text.startswith("napari-vitcam gradcam class=xxx")
