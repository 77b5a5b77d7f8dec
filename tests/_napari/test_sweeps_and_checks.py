"""The widget's sweeps (every block, every class as one 4D layer) and the check of each map against the model."""

import threading

import numpy as np
import pytest

from napari_vitcam._napari.jobs import ExplainRequest, explain_task
from napari_vitcam._napari.layer_input import VolumeSelection
from napari_vitcam._napari.widget import SWEEP_BLOCKS, SWEEP_CLASSES, VitcamWidget
from napari_vitcam.core.errors import Cancelled
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import explain_volume
from napari_vitcam.testing.models import OneRegionClassifier, tiny_vit

TIMEOUT_MS = 60_000


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    dock = VitcamWidget(viewer)
    viewer.window.add_dock_widget(dock)
    return dock


def use(qtbot, widget, loaded):
    with qtbot.waitSignal(widget.load_finished, timeout=TIMEOUT_MS):
        assert widget.use_model(loaded)
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("gradcam"))


def run(qtbot, widget):
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run()
    return blocker.args[0]


def choose(combo, data):
    index = combo.findData(data)
    assert index >= 0, f"{data!r} is not offered"
    combo.setCurrentIndex(index)


@pytest.fixture
def vit_model():
    model = tiny_vit(size=16, patch=4, depth=3, width=16, classes=3)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("a", "b", "c"), "blocks.2.norm1")
    return LoadedModel(model, spec)


def test_a_block_sweep_is_one_4d_layer_whose_slices_are_the_blocks(qtbot, widget, vit_model):
    data = np.random.default_rng(0).normal(size=(20, 18, 22)).astype(np.float32)
    source = widget.viewer.add_image(data, name="scan", scale=(2.0, 1.0, 0.5), translate=(5.0, 0.0, -3.0))
    use(qtbot, widget, vit_model)
    choose(widget.target_combo, SWEEP_BLOCKS)
    choose(widget.class_combo, 1)
    layer = run(qtbot, widget)
    sweep = layer.metadata["sweep"]
    assert layer.data.shape == (len(sweep["labels"]), 20, 18, 22) and sweep["over"] == "blocks"
    assert "blocks.0.norm1" in sweep["labels"] and set(sweep["class_index"]) == {1}
    assert layer.name.endswith("every block") and layer.axis_labels[0] == "block"
    np.testing.assert_allclose(layer.scale[1:], source.scale)
    np.testing.assert_allclose(layer.translate[1:], source.translate)
    k = sweep["labels"].index("blocks.1.norm1")
    alone = explain_volume(vit_model, data, target_layer="blocks.1.norm1", class_idx=1, device="cpu")
    np.testing.assert_allclose(layer.data[k], alone.heatmap, atol=1e-5)
    # the slider starts at the recommended block, and the widget says which block a slice is
    start = sweep["labels"].index("blocks.2.norm1")
    assert round(widget.viewer.dims.point[0]) == start
    assert "blocks.2.norm1" in widget.sweep_label.text()
    widget.viewer.dims.set_point(0, k)
    assert f"blocks.1.norm1 ({k + 1} of {len(sweep['labels'])}" in widget.sweep_label.text()
    assert np.array_equal(source.data, data)


def test_a_class_sweep_with_an_attention_method(qtbot, widget, vit_model):
    data = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    widget.viewer.add_image(data, name="scan")
    use(qtbot, widget, vit_model)
    choose(widget.method_combo, "relevance")
    assert not widget.target_combo.isEnabled()  # an attention method reads no single layer
    choose(widget.class_combo, SWEEP_CLASSES)
    layer = run(qtbot, widget)
    assert layer.metadata["sweep"]["labels"] == ["a", "b", "c"] and layer.data.shape == (3, 16, 16, 16)
    for k, name in enumerate("abc"):
        alone = explain_volume(vit_model, data, method="relevance", class_idx=name, device="cpu")
        np.testing.assert_allclose(layer.data[k], alone.heatmap, atol=1e-5)


def test_sweeping_blocks_and_classes_at_once_is_refused(qtbot, widget, vit_model, monkeypatch):
    widget.viewer.add_image(np.zeros((16, 16, 16), np.float32), name="scan")
    use(qtbot, widget, vit_model)
    choose(widget.target_combo, SWEEP_BLOCKS)
    choose(widget.class_combo, SWEEP_CLASSES)
    seen = []
    monkeypatch.setattr("napari_vitcam._napari.notices.notify", lambda text, **kw: seen.append(text))
    assert not widget.run()
    assert seen and "not both" in seen[0]


def reader_model():
    model = OneRegionClassifier(size=16, patch=4, token=(1, 2, 3))
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("none")), ("dark", "bright"), "embed")
    return model, LoadedModel(model, spec)


def distracted_volume(model: OneRegionClassifier) -> np.ndarray:
    """The read patch bright, and eight other patches brighter still (the model never reads them)."""
    volume = model.bright_input(level=3.0)[0, 0].numpy()
    for i in range(8):
        a, b, c = (i % 4) * 4, 12, ((i // 4) * 4)
        volume[a : a + 4, b : b + 4, c : c + 4] += 6.0
    return volume


def test_a_map_that_follows_the_model_passes_the_check(qtbot, widget):
    model, loaded = reader_model()
    widget.viewer.add_image(distracted_volume(model), name="scan")
    use(qtbot, widget, loaded)
    choose(widget.method_combo, "hirescam")  # exactly the read patch
    layer = run(qtbot, widget)
    assert layer.metadata["model_check_passed"] is True
    assert [c["baseline"] for c in layer.metadata["model_check"]] == ["blur", "mean"]
    assert widget.check_label.text().startswith("Model check: removing the map's top")
    assert "do not trust" not in widget.check_label.text()


def test_a_map_that_ignores_the_model_is_flagged(qtbot, widget):
    model, loaded = reader_model()
    widget.viewer.add_image(distracted_volume(model), name="scan")
    use(qtbot, widget, loaded)
    choose(widget.method_combo, "gradcam")  # token-mean gradients: follows brightness, peaks at the distractors
    layer = run(qtbot, widget)
    assert layer.metadata["model_check_passed"] is False
    assert "do not trust it" in widget.check_label.text()
    widget.check_box.setChecked(False)
    layer = run(qtbot, widget)
    assert "model_check" not in layer.metadata and widget.check_label.text() == ""


def test_cancel_during_the_check_cancels_the_run(widget):
    model, loaded = reader_model()
    source = widget.viewer.add_image(distracted_volume(model), name="scan")
    request = ExplainRequest(
        loaded=loaded,
        source=source,
        data=source.data,
        selection=VolumeSelection("scan", source.data.shape),
        target_layer="embed",
        class_idx=1,
        method="hirescam",
        upsample="smooth",
        device="cpu",
    )
    cancel = threading.Event()
    stages: list[str] = []

    def progress(stage: str) -> None:
        stages.append(stage)
        if stage == "check":  # the map is made; Cancel is pressed while it is checked
            cancel.set()

    with pytest.raises(Cancelled):
        explain_task(request)(progress, cancel)
    assert stages[-1] == "check"
    done = explain_task(request)(lambda stage: None, threading.Event())  # uncancelled, the same request is checked
    assert len(done.checks) == 2


def test_a_sweep_shows_the_prediction_for_the_volume_it_swept(qtbot, widget, vit_model):
    rng = np.random.default_rng(3)
    widget.viewer.add_image(rng.normal(size=(16, 16, 16)).astype(np.float32), name="first")
    use(qtbot, widget, vit_model)
    run(qtbot, widget)
    assert "Predicted for first" in widget.prediction.headline.text()
    data = rng.normal(size=(16, 16, 16)).astype(np.float32)
    widget.viewer.add_image(data, name="second")
    widget.select_layer("second")
    choose(widget.class_combo, SWEEP_CLASSES)
    layer = run(qtbot, widget)
    alone = explain_volume(vit_model, data, device="cpu")
    assert f"Predicted for second: <b>{alone.predicted_name}</b>" in widget.prediction.headline.text()
    shown = [(name, float(p.rstrip(" %")) / 100) for name, p in widget.prediction.rows()]
    assert [name for name, _ in shown] == [name for name, _ in alone.ranked_probabilities]
    np.testing.assert_allclose([p for _, p in shown], [p for _, p in alone.ranked_probabilities], atol=1e-3)
    assert layer.metadata["predicted_class"] == alone.predicted_name
