"""The napari reader: NIfTI files and DICOM series open as layers whose voxels sit at the file's millimetres."""

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from napari.components import ViewerModel
from npe2 import PluginManifest

from napari_vitcam._napari.reader import METADATA_KEY, get_reader
from napari_vitcam.testing.scans import SeriesGeometry, lps_to_ras, oblique_affine, write_ct_series, write_nifti
from napari_vitcam.volumes.geometry import WORLD_TO_RAS, permuted
from napari_vitcam.volumes.registry import read_volume

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_vitcam" / "_napari" / "napari.yaml"

AFFINES = {
    "oblique-flipped-anisotropic": oblique_affine((3.0, 0.8, 0.8), 15.0, flip=1, origin=(-40.0, 25.0, 12.5)),
    "LAS": np.array([[-0.9, 0, 0, 80.0], [0, 0.9, 0, -100.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]),
    "stored-z-first-sheared": np.array([[0.1, 0, -0.7, 50.0], [0, -0.7, 0, 40.0], [4.0, 0, 0.05, -20.0], [0, 0, 0, 1]]),
}


@pytest.fixture(autouse=True)
def plugin(npe2pm):
    """This tree's manifest in a plugin manager of its own (napari finds no other plugin)."""
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        yield npe2pm


def open_layer(path):
    viewer = ViewerModel()
    (layer,) = viewer.open(str(path), plugin="napari-vitcam")
    return viewer, layer


def ras_of_layer_voxels(layer, points):
    world = np.array([layer.data_to_world(p) for p in points])
    return (WORLD_TO_RAS[:3, :3] @ world.T).T + WORLD_TO_RAS[:3, 3]


def test_the_manifest_contributes_the_reader_and_the_writer():
    manifest = PluginManifest.from_file(MANIFEST)
    (reader,) = manifest.contributions.readers
    assert {"*.nii", "*.nii.gz", "*.dcm"} <= set(reader.filename_patterns) and reader.accepts_directories
    (writer,) = manifest.contributions.writers
    assert writer.layer_types == ["image"] and set(writer.filename_extensions) == {".nii", ".nii.gz"}


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_nifti_corner_voxels_land_where_nibabel_says(tmp_path, kind):
    array = np.random.default_rng(0).normal(size=(10, 14, 12)).astype(np.float32)
    path = write_nifti(tmp_path / "scan.nii.gz", array, AFFINES[kind])
    _, layer = open_layer(path)
    order = layer.metadata[METADATA_KEY]["layer_axes_from_file"]
    file_corners = np.array(list(itertools.product(*[(0, n - 1) for n in array.shape])), dtype=float)
    layer_corners = file_corners[:, order]
    expected = nib.affines.apply_affine(nib.load(path).affine, file_corners)
    np.testing.assert_allclose(ras_of_layer_voxels(layer, layer_corners), expected, atol=1e-6)
    for file_index, layer_index in zip(file_corners.astype(int), layer_corners.astype(int), strict=True):
        assert layer.data[tuple(layer_index)] == array[tuple(file_index)]
    assert not layer.data.flags.writeable
    np.testing.assert_allclose(layer.metadata[METADATA_KEY]["affine_ras"], nib.load(path).affine)
    assert str(layer.units[0]) == "millimeter" and tuple(layer.axis_labels) == ("S", "P", "L")


def test_the_same_scan_stored_in_two_orientations_is_the_same_layer(tmp_path):
    array = np.random.default_rng(1).normal(size=(10, 14, 12)).astype(np.float32)
    affine = AFFINES["oblique-flipped-anisotropic"]
    write_nifti(tmp_path / "a.nii", array, affine)
    order = (2, 0, 1)
    write_nifti(tmp_path / "b.nii", np.transpose(array, order), permuted(affine, order))
    _, a = open_layer(tmp_path / "a.nii")
    _, b = open_layer(tmp_path / "b.nii")
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine.affine_matrix, b.affine.affine_matrix, atol=1e-9)


def test_an_axial_ct_series_opens_radiologically_in_mm_with_a_soft_tissue_window(tmp_path):
    stored = np.random.default_rng(2).integers(0, 3000, size=(6, 16, 20)).astype(np.int16)
    geometry = SeriesGeometry(pixel_spacing=(0.7, 0.9), slice_spacing=2.5)
    paths = write_ct_series(tmp_path / "ct", stored, geometry, slope=1.0, intercept=-1024.0)
    _, layer = open_layer(tmp_path / "ct")
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)
    assert layer.data.shape == (6, 16, 20)  # slices on the slider, rows down, columns across
    for path in paths:
        ds = pydicom.dcmread(path)
        ipp = np.asarray(ds.ImagePositionPatient, float)
        last = ipp + (ds.Rows - 1) * ds.PixelSpacing[0] * np.asarray(ds.ImageOrientationPatient[3:], float)
        last = last + (ds.Columns - 1) * ds.PixelSpacing[1] * np.asarray(ds.ImageOrientationPatient[:3], float)
        first_index = np.round(layer.world_to_data(list(np.asarray([ipp[2], ipp[1], ipp[0]])))).astype(int)
        assert first_index[1:].tolist() == [0, 0]
        np.testing.assert_allclose(layer.data[first_index[0]], ds.pixel_array - 1024.0)
        np.testing.assert_allclose(
            ras_of_layer_voxels(layer, [(first_index[0], ds.Rows - 1, ds.Columns - 1)])[0], lps_to_ras(last), atol=1e-4
        )
    matrix = layer.affine.affine_matrix[:3, :3]
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=0), (2.5, 0.7, 0.9), rtol=1e-6)
    # rows run posterior (anterior at the top of the screen), columns to the patient's left (right on the left)
    assert matrix[1, 1] > 0 and matrix[2, 2] > 0


def test_the_layer_is_the_volume_the_command_line_reads(tmp_path):
    stored = np.random.default_rng(3).integers(0, 3000, size=(5, 8, 9)).astype(np.int16)
    write_ct_series(tmp_path / "ct", stored, SeriesGeometry())
    _, layer = open_layer(tmp_path / "ct")
    volume = read_volume(tmp_path / "ct")
    order = layer.metadata[METADATA_KEY]["layer_axes_from_file"]
    np.testing.assert_array_equal(layer.data, np.transpose(volume.array, order))


def test_files_it_cannot_read_are_left_to_other_readers(tmp_path):
    (tmp_path / "image.tif").write_bytes(b"II*\x00")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert get_reader(str(tmp_path / "image.tif")) is None
    assert get_reader(str(tmp_path / "notes")) is None
    assert get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None


def test_a_refused_series_reaches_the_user_with_its_reason(tmp_path):
    positions = list(SeriesGeometry().slice_positions(6))
    positions[2] = positions[1]
    stored = np.zeros((6, 4, 4), np.int16)
    write_ct_series(tmp_path / "bad", stored, SeriesGeometry(positions=tuple(positions)))
    with pytest.raises(Exception, match="2 slices share a position"):
        ViewerModel().open(str(tmp_path / "bad"), plugin="napari-vitcam")
