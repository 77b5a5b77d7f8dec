"""A screenshot of the 3D view under Xvfb shows heatmap pixels over the volume."""

import numpy as np
import pytest
import torch

from napari_vitcam import ViT3D, ViTConfig
from napari_vitcam._napari.recent import CONFIG_DIR_VARIABLE
from napari_vitcam._napari.widget import VitcamWidget
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization


def opengl_missing() -> str | None:
    """Why no OpenGL context can be made here, or None when one can."""
    from qtpy.QtGui import QOpenGLContext

    context = QOpenGLContext()
    return None if context.create() else "no OpenGL context can be created on this display"


def ball(shape=(32, 40, 40)) -> np.ndarray:
    z, y, x = np.indices(shape)
    center = np.array(shape)[:, None, None, None] / 2
    distance = np.sqrt(((np.stack([z, y, x]) - center) ** 2).sum(0))
    return (distance < 13).astype(np.float32) + np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32)


def warm(rgb: np.ndarray) -> np.ndarray:
    """Pixels clearly redder than they are blue: the heatmap's colours, never the grey volume's."""
    rgb = rgb[..., :3].astype(int)
    return rgb[..., 0] - rgb[..., 2] > 40


def test_the_3d_view_shows_the_heatmap_over_the_volume(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    reason = opengl_missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path))
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1200, 800)
    viewer.add_image(ball(), contrast_limits=(0, 2), scale=(1.5, 1, 1), translate=(20, -5, 8))
    viewer.dims.ndisplay = 3
    widget = VitcamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    torch.manual_seed(0)
    model = ViT3D(ViTConfig(img_size=16, patch_size=4, width=16, depth=2, heads=2, num_classes=2))
    spec = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16), normalization=Normalization("zscore")))
    with qtbot.waitSignal(widget.load_finished, timeout=60_000):
        widget.use_model(LoadedModel(model, spec))
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("gradcam"))
    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as finished:
        widget.run()
    heatmap = finished.args[0]
    assert heatmap is not None and heatmap.data.max() == pytest.approx(1.0)

    heatmap.visible = False
    without = viewer.screenshot(canvas_only=True)
    heatmap.visible = True
    with_heatmap = viewer.screenshot(canvas_only=True)
    np.save(tmp_path / "screenshot.npy", with_heatmap)

    on_volume = without[..., :3].max(axis=-1) > 30
    assert on_volume.mean() > 0.02, "the volume itself is not visible"
    assert warm(without).sum() == 0
    heat = warm(with_heatmap)
    assert heat.sum() > 200, "no heatmap colours in the 3D view"
    assert (heat & on_volume).sum() / heat.sum() > 0.9, "the heatmap does not lie over the volume"
