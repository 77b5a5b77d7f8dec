"""The widget gives the model the layer's geometry: a scan opened with the reader is reoriented and resampled as
the checkpoint declares; a layer of unknown geometry is explained as stored, with a warning."""

from pathlib import Path

import numpy as np
import pytest
import torch
from napari.components import ViewerModel
from napari.utils.notifications import notification_manager

import napari_vitcam as nv
from napari_vitcam._napari.layer_geometry import layer_affine_ras
from napari_vitcam._napari.reader import METADATA_KEY
from napari_vitcam._napari.widget import VitcamWidget
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.testing.scans import oblique_affine, write_nifti
from napari_vitcam.volumes.geometry import permuted

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_vitcam" / "_napari" / "napari.yaml"
TIMEOUT_MS = 60_000
AFFINES = {
    "oblique": oblique_affine((3.0, 0.8, 0.8), 15.0, flip=1, origin=(-40.0, 25.0, 12.5)),
    "stored-z-first": np.array([[0, 0, -0.7, 50.0], [0, -0.9, 0, 40.0], [2.5, 0, 0, -20.0], [0, 0, 0, 1]]),
}


@pytest.fixture(autouse=True)
def plugin(npe2pm):
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        yield npe2pm


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_a_layer_from_the_reader_has_its_files_affine_in_its_own_axis_order(tmp_path, kind):
    array = np.random.default_rng(0).normal(size=(10, 14, 12)).astype(np.float32)
    path = write_nifti(tmp_path / "scan.nii.gz", array, AFFINES[kind])
    (layer,) = ViewerModel().open(str(path), plugin="napari-vitcam")
    order = tuple(layer.metadata[METADATA_KEY]["layer_axes_from_file"])
    expected = permuted(AFFINES[kind], order)
    np.testing.assert_allclose(layer_affine_ras(layer), expected, atol=1e-5)
    # without the metadata: where napari shows it, read in the plugin's world (S, P, L)
    layer.metadata = {}
    assert layer.source.reader_plugin == "napari-vitcam"
    np.testing.assert_allclose(layer_affine_ras(layer), expected, atol=1e-5)


def test_a_layer_of_unknown_origin_has_no_geometry():
    layer = ViewerModel().add_image(np.zeros((4, 5, 6)), scale=(2.0, 1.0, 1.0))
    assert layer_affine_ras(layer) is None


@pytest.fixture
def framed_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec_input = InputSpec(
        1, (16, 16, 16), Normalization("zscore"), orientation="RAS", spacing=(1.5, 1.0, 2.0), fit="crop_or_pad"
    )
    spec = ModelSpec(spec_input, ("calm", "busy"), "blocks.1.norm1")
    return nv.save_checkpoint(tmp_path / "framed.safetensors", model, spec)


def test_the_widget_explains_a_scan_in_the_checkpoints_frame(
    qtbot, make_napari_viewer, tmp_path, framed_checkpoint, monkeypatch
):
    notes = []
    monkeypatch.setattr(notification_manager, "dispatch", notes.append)
    viewer = make_napari_viewer()
    widget = VitcamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    affine = AFFINES["stored-z-first"]
    array = np.random.default_rng(1).normal(size=(12, 20, 16)).astype(np.float32)
    (scan,) = viewer.open(str(write_nifti(tmp_path / "scan.nii.gz", array, affine)), plugin="napari-vitcam")
    with qtbot.waitSignal(widget.load_finished, timeout=TIMEOUT_MS):
        assert widget.load(framed_checkpoint)
    widget.method_combo.setCurrentIndex(
        widget.method_combo.findData("gradcam")
    )  # compared with explain_volume's default
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run(scan)
    heatmap = blocker.args[0]
    explanation = widget.last_run.explanation
    assert explanation.preprocessing["frame"] == "RAS" and "frame_note" not in explanation.preprocessing
    # the same map as from the file itself, in the layer's axis order
    order = tuple(scan.metadata[METADATA_KEY]["layer_axes_from_file"])
    expected = nv.explain_volume(nv.load_checkpoint(framed_checkpoint), array, affine=affine)
    np.testing.assert_allclose(heatmap.data, np.transpose(expected.heatmap, order), atol=1e-5)
    assert [n for n in notes if str(n.message).startswith("Grad-CAM")] == []

    plain = viewer.add_image(array, name="plain")
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        assert widget.run(plain)
    (note,) = [n for n in notes if str(n.message).startswith("Grad-CAM")]  # napari warns about mixed units too
    assert "geometry is unknown" in str(note.message) and "\n" not in str(note.message)
    assert str(note.severity) == "warning"
