"""The dock widget end to end, with real models built here and real checkpoint files."""

import time

import numpy as np
import pytest
import torch
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt

from napari_vitcam import ViT3D, ViTConfig
from napari_vitcam._napari import jobs as worker_module
from napari_vitcam._napari import widget as widget_module
from napari_vitcam._napari.recent import CONFIG_DIR_VARIABLE, RecentPaths
from napari_vitcam._napari.widget import VitcamWidget
from napari_vitcam.core.errors import DeviceOutOfMemoryError
from napari_vitcam.models.checkpoint import save_checkpoint
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization

CLASSES = ("healthy", "lesion", "cyst")
TIMEOUT_MS = 60_000


def small_vit(channels=1, size=16, classes=CLASSES, width=16, depth=2):
    torch.manual_seed(0)
    config = ViTConfig(
        in_channels=channels, img_size=size, patch_size=4, width=width, depth=depth, heads=2, num_classes=len(classes)
    )
    spec = ModelSpec(
        input=InputSpec(channels=channels, spatial_size=(size, size, size), normalization=Normalization("zscore")),
        class_names=classes,
    )
    return ViT3D(config), spec


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path / "config"))


@pytest.fixture
def checkpoint(tmp_path):
    model, spec = small_vit()
    return save_checkpoint(tmp_path / "small.safetensors", model, spec)


@pytest.fixture
def notes(monkeypatch):
    seen = []
    monkeypatch.setattr(notification_manager, "dispatch", seen.append)
    return seen


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer):
    dock = VitcamWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Grad-CAM (3D ViT)")
    return dock


def load(qtbot, widget, path=None, *, model=None, method="gradcam"):
    """Load, then choose ``method`` (these tests are about the widget, not the default method: see below)."""
    with qtbot.waitSignal(widget.load_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.load(path) if model is None else widget.use_model(model)
    if method is not None and blocker.args[0] is not None:
        widget.method_combo.setCurrentIndex(widget.method_combo.findData(method))
    return blocker.args[0]


def test_the_measured_default_method_is_chosen_and_marked(qtbot, widget, checkpoint):
    ready = load(qtbot, widget, checkpoint, method=None)
    assert ready.method is not None and ready.method.method == "rollout"  # a cls-token ViT
    assert widget.method_combo.currentData() == "rollout"
    assert widget.method_combo.currentText().endswith("(recommended)")
    assert not widget.target_combo.isEnabled()  # rollout reads every block's attention, no single layer
    others = [
        widget.method_combo.itemText(i)
        for i in range(widget.method_combo.count())
        if i != widget.method_combo.currentIndex()
    ]
    assert not any("recommended" in text for text in others)


def run(qtbot, widget, layer=None):
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run(layer)
    return blocker.args[0]


def volume(shape=(20, 24, 28), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_end_to_end_from_a_checkpoint_file(qtbot, viewer, widget, checkpoint, notes):
    data = volume()
    original = data.copy()
    source = viewer.add_image(data, name="scan", scale=(2.5, 0.8, 1.2), translate=(10.0, -4.0, 3.0))
    source_events = []
    source.events.data.connect(source_events.append)
    ready = load(qtbot, widget, checkpoint)
    assert ready is not None and widget.model_label.text().startswith("small.safetensors")
    layer = run(qtbot, widget)

    assert layer is viewer.layers[-1] and len(viewer.layers) == 2
    assert layer.name.startswith("Grad-CAM · ") and layer.name.endswith(" · " + layer.metadata["target_layer"])
    assert layer.data.shape == data.shape and layer.data.min() >= 0.0 and layer.data.max() <= 1.0
    np.testing.assert_allclose(layer.scale, source.scale)
    np.testing.assert_allclose(layer.translate, source.translate)
    np.testing.assert_allclose(layer.extent.world, source.extent.world)
    metadata = layer.metadata
    assert metadata["checkpoint"] == str(checkpoint)
    assert metadata["checkpoint_sha256"] and all(len(v) == 64 for v in metadata["checkpoint_sha256"].values())
    assert set(metadata["timings"]) >= {"load", "preprocess", "forward", "backward", "map", "upsample"}
    assert metadata["requested_class"] == "predicted" and metadata["class_name"] == metadata["predicted_class"]

    rows = widget.prediction.rows()
    assert sorted(name for name, _ in rows) == sorted(CLASSES)
    values = [float(p.rstrip(" %")) for _, p in rows]
    assert values == sorted(values, reverse=True) and sum(values) == pytest.approx(100, abs=0.2)
    assert metadata["predicted_class"] in widget.prediction.headline.text()

    assert source.data is data and np.array_equal(data, original) and source_events == []
    assert widget.progress.format() == "done" and notes == []


def test_blocks_are_listed_with_the_recommended_one_chosen(qtbot, widget, checkpoint):
    load(qtbot, widget, checkpoint)
    combo = widget.target_combo
    names = [combo.itemData(i) for i in range(combo.count())]
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert names == ["blocks.0.norm1", "blocks.0", "blocks.1.norm1", "blocks.1", widget_module.SWEEP_BLOCKS]
    assert combo.currentData() == "blocks.1.norm1" and "recommended" in combo.currentText()
    assert "zero gradient" in labels[3]
    assert combo.itemData(3, Qt.ItemDataRole.ToolTipRole)
    classes = [widget.class_combo.itemText(i) for i in range(widget.class_combo.count())]
    assert classes == ["predicted", *CLASSES, widget_module.SWEEP_CLASSES]


def test_recent_checkpoints_are_remembered_across_sessions(qtbot, viewer, widget, checkpoint, monkeypatch):
    monkeypatch.setattr(widget_module.QFileDialog, "getOpenFileName", lambda *a, **k: (str(checkpoint), ""))
    with qtbot.waitSignal(widget.load_finished, timeout=TIMEOUT_MS):
        widget._browse_file()
    assert RecentPaths.default().load() == [str(checkpoint)]
    later = VitcamWidget(viewer)
    qtbot.addWidget(later)
    assert later.checkpoint_combo.itemText(0) == str(checkpoint)


def test_the_layer_list_follows_the_viewer(qtbot, viewer, widget, checkpoint):
    assert widget.layer_names() == [] and not widget.run_button.isEnabled()
    viewer.add_image(np.zeros((8, 9)), name="slice")
    viewer.add_image(np.zeros((8, 9, 10, 3), dtype=np.uint8), rgb=True, name="rgb")
    viewer.add_labels(np.zeros((8, 9, 10), dtype=np.uint8), name="mask")
    first = viewer.add_image(volume((8, 9, 10)), name="first")
    second = viewer.add_image(volume((2, 8, 9, 10)), name="second")
    assert widget.layer_names() == ["first", "second"]
    widget.select_layer(second)
    first.name = "renamed"
    assert widget.layer_names() == ["renamed", "second"] and widget.selected_layer() is second
    viewer.layers.move(viewer.layers.index(second), 0)
    assert widget.layer_names() == ["second", "renamed"] and widget.selected_layer() is second
    viewer.layers.remove(second)
    assert widget.layer_names() == ["renamed"] and widget.selected_layer() is first
    load(qtbot, widget, checkpoint)
    assert widget.run_button.isEnabled()
    run(qtbot, widget)
    assert widget.layer_names() == ["renamed"]  # heatmaps are not offered as volumes
    viewer.layers.remove(first)
    assert widget.layer_names() == [] and not widget.run_button.isEnabled()


def test_a_4d_layer_uses_the_time_point_shown(qtbot, viewer, widget, checkpoint):
    data = volume((3, 12, 12, 12))
    source = viewer.add_image(data, name="series")
    viewer.dims.set_point(0, 2)
    load(qtbot, widget, checkpoint)
    layer = run(qtbot, widget)
    assert layer.data.shape == data.shape
    assert layer.data[:2].max() == 0 and layer.data[2].max() == pytest.approx(1.0)
    assert layer.metadata["selection"]["fixed_axes"] == {"0": 2}
    assert source.data is data


def test_a_channel_axis_goes_to_a_multichannel_model(qtbot, viewer, widget):
    model, spec = small_vit(channels=2)
    source = viewer.add_image(volume((2, 12, 12, 12)), name="two channels")
    load(qtbot, widget, model=LoadedModel(model, spec))
    layer = run(qtbot, widget)
    assert layer.data.shape == source.data.shape
    np.testing.assert_array_equal(layer.data[0], layer.data[1])
    assert layer.metadata["selection"]["channel_axis"] == 0


def test_running_again_replaces_unless_keep_previous(qtbot, viewer, widget, checkpoint):
    viewer.add_image(volume(), name="scan")
    load(qtbot, widget, checkpoint)
    first = run(qtbot, widget)
    widget.upsample_combo.setCurrentIndex(widget.upsample_combo.findData("patch"))
    again = run(qtbot, widget)
    assert again is first and len(viewer.layers) == 2 and first.metadata["upsample"] == "patch"
    widget.keep_check.setChecked(True)
    kept = run(qtbot, widget)
    assert kept is not first and len(viewer.layers) == 3
    widget.keep_check.setChecked(False)
    widget.class_combo.setCurrentIndex(widget.class_combo.findText("cyst"))
    cyst = run(qtbot, widget)
    assert cyst not in (first, kept) and " · cyst · " in cyst.name and len(viewer.layers) == 4


def test_cancel_stops_within_a_second_and_adds_nothing(qtbot, viewer, widget):
    model, spec = small_vit(size=32, width=192, depth=12)
    viewer.add_image(volume((32, 32, 32)), name="scan")
    load(qtbot, widget, model=LoadedModel(model, spec))
    stages = []
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        widget.run()
        qtbot.waitUntil(lambda: widget.progress.format().startswith("forward"), timeout=TIMEOUT_MS)
        stages.append(widget.progress.format())
        started = time.perf_counter()
        widget.cancel()
    elapsed = time.perf_counter() - started
    assert blocker.args == [None] and elapsed < 1.0, elapsed
    assert len(viewer.layers) == 1 and widget.progress.format() == "cancelled"
    assert widget.run_button.isEnabled() and not widget.busy


def test_2d_and_rgb_layers_are_refused_with_a_notification(qtbot, viewer, widget, checkpoint, notes):
    load(qtbot, widget, checkpoint)
    flat = viewer.add_image(np.zeros((16, 16), dtype=np.float32), name="slice")
    rgb = viewer.add_image(np.zeros((8, 16, 16, 3), dtype=np.uint8), rgb=True, name="photo")
    assert not widget.run(flat) and not widget.run(rgb)
    assert [n.severity for n in notes] == ["error", "error"]
    assert "2D" in notes[0].message and "RGB" in notes[1].message
    assert all("\n" not in n.message and "Grad-CAM:" in n.message for n in notes)
    assert len(viewer.layers) == 2 and not widget.busy


def test_a_wrong_channel_count_is_a_notification(qtbot, viewer, widget, notes):
    model, spec = small_vit(channels=2)
    viewer.add_image(volume((12, 12, 12)), name="one channel")
    load(qtbot, widget, model=LoadedModel(model, spec))
    assert not widget.run()
    assert len(notes) == 1 and "takes 2 channels" in notes[0].message


def test_a_model_input_mismatch_is_a_notification(qtbot, viewer, widget, notes):
    model, spec = small_vit(size=16)
    wrong = spec.with_(input=InputSpec(spatial_size=(24, 24, 24)))
    assert load(qtbot, widget, model=LoadedModel(model, wrong)) is None
    assert len(notes) == 1 and "the model fails on an input of shape (1, 1, 24, 24, 24)" in notes[0].message
    assert "\n" not in notes[0].message and widget.ready is None


def test_out_of_memory_offers_a_rerun_on_cpu(qtbot, viewer, widget, checkpoint, notes, monkeypatch):
    viewer.add_image(volume(), name="scan")
    load(qtbot, widget, checkpoint)
    real = worker_module.explain_volume

    def out_of_memory(*args, **kwargs):
        raise DeviceOutOfMemoryError("out of memory on cuda explaining a volume: rerun on the CPU", "cuda")

    monkeypatch.setattr(worker_module, "explain_volume", out_of_memory)
    assert run(qtbot, widget) is None and len(viewer.layers) == 1
    (note,) = notes
    assert "out of memory" in note.message and [label for label, _ in note.actions] == ["Rerun on CPU"]
    monkeypatch.setattr(worker_module, "explain_volume", real)
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        note.actions[0][1]()
    assert blocker.args[0] is viewer.layers[-1] and widget.device_combo.currentData() == "cpu"
    assert blocker.args[0].metadata["device"] == "cpu"


def test_a_pickled_checkpoint_is_loaded_only_when_the_user_trusts_it(qtbot, widget, tmp_path, notes, monkeypatch):
    model, _ = small_vit()
    path = tmp_path / "whole_model.pt"
    torch.save(model, path)
    answers = []
    monkeypatch.setattr(widget_module, "confirm_trust", lambda parent, p: answers.append(p) or False)
    assert load(qtbot, widget, path) is None
    assert answers == [path] and widget.ready is None
    assert len(notes) == 1 and "not loaded" in notes[0].message and notes[0].severity == "info"
    monkeypatch.setattr(widget_module, "confirm_trust", lambda parent, p: True)
    widget.load(path)  # refused first, then loaded again with trust
    qtbot.waitUntil(lambda: widget.ready is not None and not widget.busy, timeout=TIMEOUT_MS)
    assert widget.ready is not None and widget.ready.loaded.source == path


def test_a_corrupt_checkpoint_is_a_notification(qtbot, widget, tmp_path, notes):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    assert load(qtbot, widget, path) is None
    assert len(notes) == 1 and notes[0].message.startswith("Grad-CAM: cannot load broken.safetensors: ")
    assert "\n" not in notes[0].message and widget.ready is None and not widget.busy


def test_no_heatmap_when_the_source_layer_is_removed_during_the_run(qtbot, viewer, widget, checkpoint, notes):
    source = viewer.add_image(volume(), name="scan")
    load(qtbot, widget, checkpoint)
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run()
        viewer.layers.remove(source)
    assert blocker.args == [None] and len(viewer.layers) == 0
    assert len(notes) == 1 and "was removed during the run" in notes[0].message


def test_an_unexpected_error_reaches_napari_and_the_widget_recovers(qtbot, viewer, widget, checkpoint, monkeypatch):
    viewer.add_image(volume(), name="scan")
    load(qtbot, widget, checkpoint)
    received = []
    monkeypatch.setattr(notification_manager, "receive_error", lambda *args: received.append(args[1]))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(worker_module, "explain_volume", broken)
    assert run(qtbot, widget) is None
    assert [type(e) for e in received] == [ZeroDivisionError]
    assert not widget.busy and widget.run_button.isEnabled() and len(viewer.layers) == 1


@pytest.mark.parametrize("new_shape", [(20, 24, 28), (10, 12, 14)])
def test_a_result_for_source_data_replaced_during_the_run_is_refused(
    qtbot, viewer, widget, checkpoint, notes, new_shape
):
    source = viewer.add_image(volume(), name="scan")
    load(qtbot, widget, checkpoint)
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert widget.run()
        source.data = volume(new_shape, seed=1)  # the result cannot arrive before this: it is queued
    assert blocker.args == [None] and len(viewer.layers) == 1
    assert len(notes) == 1 and "the data of layer 'scan' changed during the run" in notes[0].message
    layer = run(qtbot, widget)  # the next run explains the new data
    assert layer.data.shape == new_shape


def test_a_nan_voxel_is_refused_with_where_unless_replacing_is_chosen(qtbot, viewer, widget, checkpoint, notes):
    data = volume()
    data[3, 4, 5] = np.nan
    viewer.add_image(data, name="resampled")
    load(qtbot, widget, checkpoint)
    assert run(qtbot, widget) is None and len(viewer.layers) == 1
    (note,) = notes
    assert "1 of 13440 voxels are not finite (1 NaN; the first at index (3, 4, 5))" in note.message
    assert "\n" not in note.message
    widget.replace_check.setChecked(True)
    layer = run(qtbot, widget)
    assert np.isfinite(layer.data).all() and layer.data.max() == pytest.approx(1.0)
    assert all(np.isfinite(float(p.rstrip(" %"))) for _, p in widget.prediction.rows())
    assert np.isnan(data[3, 4, 5])  # the user's layer still holds its NaN


def test_a_rerun_never_renames_or_overwrites_a_heatmap_the_user_renamed(qtbot, viewer, widget, checkpoint):
    viewer.add_image(volume(), name="scan")
    load(qtbot, widget, checkpoint)
    first = run(qtbot, widget)
    first.name = "for the paper"
    kept = first.data.copy()
    again = run(qtbot, widget)
    assert again is not first and first.name == "for the paper" and len(viewer.layers) == 3
    np.testing.assert_array_equal(first.data, kept)


def test_a_4d_rerun_at_another_time_point_keeps_the_first(qtbot, viewer, widget, checkpoint):
    data = volume((3, 12, 12, 12))
    viewer.add_image(data, name="series")
    load(qtbot, widget, checkpoint)
    viewer.dims.set_point(0, 2)
    layer = run(qtbot, widget)
    at_two = layer.data[2].copy()
    viewer.dims.set_point(0, 0)
    assert run(qtbot, widget) is layer
    assert widget.last_run.heatmap.shape == (12, 12, 12)  # the worker sends one time point, not a series
    np.testing.assert_array_equal(layer.data[2], at_two)
    assert layer.data[0].max() == pytest.approx(1.0) and layer.data[1].max() == 0
    assert layer.metadata["explained"] == [{"0": 2}, {"0": 0}]


def test_the_probabilities_shown_are_the_models_own_output(qtbot, viewer, widget):
    pytest.importorskip("monai", reason="the monai extra is not installed")
    pytest.importorskip("einops", reason="MONAI's ViT needs einops")
    from monai.networks.nets import ViT

    from napari_vitcam.models.spec_defaults import complete_spec
    from napari_vitcam.pipeline.preprocess import prepare_input

    torch.manual_seed(3)
    model = ViT(
        1,
        (16, 16, 16),
        (8, 8, 8),
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=2,
        classification=True,
        num_classes=2,
        post_activation="Tanh",
    ).eval()
    with torch.no_grad():
        model.classification_head[0].weight.mul_(40.0)  # a confident head, as training gives
    spec = complete_spec(model, ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("no", "yes")))
    data = volume((16, 16, 16), seed=5)
    with torch.no_grad():
        own = model(prepare_input(data, spec.input, torch.device("cpu")))[0].softmax(1)[0].numpy()
    viewer.add_image(data, name="scan")
    load(qtbot, widget, model=LoadedModel(model, spec))
    layer = run(qtbot, widget)
    shown = dict(widget.prediction.rows())
    assert shown == {name: f"{100 * p:.1f} %" for name, p in zip(("no", "yes"), own, strict=True)}
    assert layer.metadata["score_layer"] == "classification_head.0"
    assert "classification_head.0 (before the model's output activation)" in widget.prediction.scores.text()
    assert "the model's output" in widget.prediction.scores.text()


def test_a_checkpoint_cannot_be_chosen_while_a_run_is_going(qtbot, viewer, widget, checkpoint, tmp_path):
    other_model, spec = small_vit(classes=("a", "b"))
    other = save_checkpoint(tmp_path / "other.safetensors", other_model, spec)
    load(qtbot, widget, other)
    load(qtbot, widget, checkpoint)  # both are now recent checkpoints in the combo box
    viewer.add_image(volume(), name="scan")
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        assert widget.run()
        assert not widget.checkpoint_combo.isEnabled()  # picking a recent checkpoint would do nothing
        assert not widget.load(other)
        assert widget.checkpoint_combo.currentText() == str(checkpoint)  # still names the model in use
    assert widget.checkpoint_combo.isEnabled()
