"""The napari writer: a heatmap layer saved as NIfTI reloads (nibabel) with its scan's affine and its provenance."""

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from napari.components import ViewerModel

import napari_vitcam as nv
from napari_vitcam._napari import heatmap_layer
from napari_vitcam._napari.layer_input import select_volume
from napari_vitcam._napari.writer import data_to_world
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.testing.scans import SeriesGeometry, lps_to_ras, oblique_affine, write_ct_series, write_nifti
from napari_vitcam.volumes.base import LayerWriteError
from napari_vitcam.volumes.geometry import WORLD_TO_RAS
from napari_vitcam.volumes.nifti import read_provenance

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_vitcam" / "_napari" / "napari.yaml"


@pytest.fixture(autouse=True)
def plugin(npe2pm):
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        yield npe2pm


@pytest.fixture
def loaded(tmp_path):
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("calm", "busy"), "blocks.1.norm1")
    return nv.load_checkpoint(nv.save_checkpoint(tmp_path / "model.safetensors", model, spec))


def explain_layer(viewer, source, loaded):
    """A heatmap layer made as the widget makes it: the real model on the layer's data."""
    selection = select_volume(source, channels=1, world_point=viewer.dims.point)
    result = nv.explain_volume(loaded, np.asarray(source.data), class_idx="busy")
    metadata = heatmap_layer.heatmap_metadata(
        result, loaded, source, selection, requested_class="busy", timings=dict(result.timings)
    )
    name = heatmap_layer.heatmap_name(result)
    return heatmap_layer.HeatmapLayers().show(
        viewer.layers, source, selection, result.heatmap, name, metadata, keep_previous=True
    )


def save(viewer, layer, path):
    viewer.layers.selection = {layer}
    written = viewer.layers.save(str(path), selected=True, plugin="napari-vitcam")
    assert written == [str(path)]
    return nib.load(path)


def test_a_heatmap_of_a_nifti_scan_reloads_with_the_scans_affine(tmp_path, loaded):
    affine = oblique_affine((3.0, 0.8, 0.8), 15.0, flip=1, origin=(-40.0, 25.0, 12.5))
    scan = np.random.default_rng(0).normal(size=(12, 30, 28)).astype(np.float32)
    source_path = write_nifti(tmp_path / "scan.nii.gz", scan, affine)
    viewer = ViewerModel()
    (source,) = viewer.open(str(source_path), plugin="napari-vitcam")
    heat = explain_layer(viewer, source, loaded)
    written = save(viewer, heat, tmp_path / "heat.nii.gz")
    np.testing.assert_allclose(written.affine, nib.load(source_path).affine, atol=1e-6)
    assert written.shape == scan.shape
    order = source.metadata["volume"]["layer_axes_from_file"]
    np.testing.assert_allclose(written.get_fdata(dtype=np.float32), np.transpose(heat.data, np.argsort(order)))
    provenance = read_provenance(tmp_path / "heat.nii.gz")
    assert provenance["method"] == "gradcam" and provenance["class_name"] == "busy"
    assert provenance["checkpoint_sha256"] == dict(loaded.sha256)
    assert "class=busy" in written.header["descrip"].tobytes().decode()


def test_a_heatmap_of_a_dicom_series_lands_on_the_series_pixels(tmp_path, loaded):
    stored = np.random.default_rng(1).integers(0, 2000, size=(8, 20, 18)).astype(np.int16)
    geometry = SeriesGeometry(
        row_cosine=(np.cos(0.3), np.sin(0.3), 0.0), column_cosine=(-np.sin(0.3), np.cos(0.3), 0.0), slice_spacing=3.0
    )
    write_ct_series(tmp_path / "ct", stored, geometry, slope=1.0, intercept=-1024.0)
    viewer = ViewerModel()
    (source,) = viewer.open(str(tmp_path / "ct"), plugin="napari-vitcam")
    written = save(viewer, explain_layer(viewer, source, loaded), tmp_path / "heat.nii")
    ends = sorted(geometry.slice_positions(8), key=lambda p: float(np.dot(p, geometry.normal())))[::7]
    row_step = geometry.pixel_spacing[0] * np.asarray(geometry.column_cosine)
    column_step = geometry.pixel_spacing[1] * np.asarray(geometry.row_cosine)
    pixels = [
        lps_to_ras(np.asarray(p) + r * row_step + c * column_step) for p in ends for r in (0, 19) for c in (0, 17)
    ]
    grid = itertools.product(*[(0, n - 1) for n in written.shape])
    corners = [nib.affines.apply_affine(written.affine, index) for index in grid]
    np.testing.assert_allclose(
        sorted(map(tuple, np.round(corners, 4))), sorted(map(tuple, np.round(pixels, 4))), atol=1e-3
    )


def test_any_3d_layer_is_saved_where_napari_shows_it(tmp_path):
    viewer = ViewerModel()
    layer = viewer.add_image(
        np.random.default_rng(2).random((5, 6, 7)).astype(np.float32),
        scale=(2.0, 0.5, 0.75),
        translate=(10.0, -3.0, 4.0),
        rotate=((1, 0, 0), (0, 0.6, -0.8), (0, 0.8, 0.6)),
        shear=(0.1, 0.0, 0.0),
    )
    np.testing.assert_allclose(
        data_to_world(layer.as_layer_data_tuple()[1], 3)[:3] @ np.array([4.0, 5.0, 6.0, 1.0]),
        layer.data_to_world((4, 5, 6)),
    )
    written = save(viewer, layer, tmp_path / "layer.nii.gz")
    for index in itertools.product((0, 4), (0, 5), (0, 6)):
        world = np.asarray(layer.data_to_world(index))
        ras = WORLD_TO_RAS[:3, :3] @ world + WORLD_TO_RAS[:3, 3]
        value = layer.data[index]
        file_index = np.round(nib.affines.apply_affine(np.linalg.inv(written.affine), ras)).astype(int)
        assert written.get_fdata()[tuple(file_index)] == pytest.approx(value)
        np.testing.assert_allclose(nib.affines.apply_affine(written.affine, file_index), ras, atol=1e-6)


def test_a_4d_layer_is_refused_in_one_line(tmp_path):
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((2, 3, 4, 5), np.float32))
    viewer.layers.selection = {layer}
    with pytest.raises(
        LayerWriteError, match=r"only 3D layers can be saved as NIfTI, this one has shape \(2, 3, 4, 5\)"
    ):
        viewer.layers.save(str(tmp_path / "t.nii"), selected=True, plugin="napari-vitcam")
    assert not (tmp_path / "t.nii").exists()


def test_a_missing_folder_reaches_the_user_instead_of_no_writer_fits(tmp_path):
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((2, 3, 4), np.float32))
    viewer.layers.selection = {layer}
    with pytest.raises(LayerWriteError, match=r"the folder .*gone does not exist"):
        viewer.layers.save(str(tmp_path / "gone" / "t.nii"), selected=True, plugin="napari-vitcam")


def test_a_heatmap_is_never_written_over_the_scan_it_explains(tmp_path, loaded):
    scan = np.random.default_rng(2).normal(size=(12, 20, 18)).astype(np.float32)
    source_path = write_nifti(tmp_path / "scan.nii.gz", scan, np.diag([0.8, 0.8, 2.0, 1.0]))
    before = source_path.read_bytes()
    viewer = ViewerModel()
    (source,) = viewer.open(str(source_path), plugin="napari-vitcam")
    heat = explain_layer(viewer, source, loaded)
    assert heat.metadata["source_file"] == str(source_path.resolve())
    viewer.layers.selection = {heat}
    with pytest.raises(LayerWriteError, match=r"^scan\.nii\.gz is the scan .*'scan'.*another file name$"):
        viewer.layers.save(str(tmp_path / "." / "scan.nii.gz"), selected=True, plugin="napari-vitcam")
    assert source_path.read_bytes() == before
    save(viewer, heat, tmp_path / "heat.nii.gz")  # any other name is written
