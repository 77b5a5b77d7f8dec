"""The Evaluate section with a real viewer, real workers and a model whose answer is known."""

import numpy as np
import pytest
import torch
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QApplication

from napari_vitcam._napari.evaluate_panel import EvaluatePanel, GridMapping, grid_mapping, labels_on_grid
from napari_vitcam._napari.layer_input import VolumeSelection
from napari_vitcam._napari.widget import VitcamWidget
from napari_vitcam.evaluation.explained import Faithfulness
from napari_vitcam.evaluation.randomization import RandomizationResult, cascading_randomization
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import model_input
from napari_vitcam.testing.models import OneRegionClassifier, tiny_vit

TIMEOUT_MS = 60_000


@pytest.fixture
def notes(monkeypatch):
    seen = []
    monkeypatch.setattr(notification_manager, "dispatch", seen.append)
    return seen


@pytest.fixture
def reader():
    return OneRegionClassifier()


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(qtbot, viewer, reader):
    """The dock with the one-region model loaded, class ``bright`` chosen and one run done on a bright volume."""
    dock = VitcamWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Grad-CAM (3D ViT)")
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("none")), ("dark", "bright"), target_layer="embed")
    with qtbot.waitSignal(dock.load_finished, timeout=TIMEOUT_MS):
        assert dock.use_model(LoadedModel(reader, spec))
    dock.class_combo.setCurrentIndex(dock.class_combo.findText("bright"))
    viewer.add_image(reader.bright_input()[0, 0].numpy(), name="scan")
    with qtbot.waitSignal(dock.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert dock.run()
    assert blocker.args[0] is not None
    dock.evaluate.setChecked(True)
    return dock


def evaluate(qtbot, panel, start):
    with qtbot.waitSignal(panel.evaluated, timeout=TIMEOUT_MS) as blocker:
        assert start()
    kind, result = blocker.args
    assert result is not None, f"{kind} failed"
    return result


def coarse_labels(viewer, reader):
    """The read region painted at half the resolution, on a shifted grid: scale 2, translate 0.5."""
    data = np.zeros((8, 8, 8), np.uint8)
    data[2:4, 4:6, 6:8] = 1  # world 3.5..7.5 etc.: exactly the model's voxels 4..7, 8..11, 12..15
    return viewer.add_labels(data, name="lesion", scale=(2, 2, 2), translate=(0.5, 0.5, 0.5))


def test_labels_on_another_grid_land_on_the_heatmaps_voxels(viewer, reader):
    source = viewer.add_image(np.zeros((16, 16, 16), np.float32), name="scan")
    labels = coarse_labels(viewer, reader)
    selection = VolumeSelection("scan", (16, 16, 16))
    mapping = grid_mapping(source, selection, labels, viewer.dims.point)
    np.testing.assert_allclose(mapping.steps, np.eye(3) / 2)
    np.testing.assert_allclose(mapping.origin, [-0.25, -0.25, -0.25])
    mask = labels_on_grid(labels.data, mapping, (16, 16, 16))
    np.testing.assert_array_equal(mask.astype(bool), reader.region().numpy())
    assert mapping.spacing == (1.0, 1.0, 1.0)


def test_a_time_series_at_2_mm_maps_its_time_point_onto_3d_labels(viewer):
    source = viewer.add_image(np.zeros((3, 8, 8, 8), np.float32), name="series", scale=(1, 2, 2, 2))
    labels = viewer.add_labels(np.zeros((16, 16, 16), np.uint8), name="organ")
    selection = VolumeSelection("series", (3, 8, 8, 8), fixed=((0, 1),))
    mapping = grid_mapping(source, selection, labels, viewer.dims.point)
    np.testing.assert_allclose(mapping.steps, 2 * np.eye(3))
    np.testing.assert_allclose(mapping.origin, [0, 0, 0], atol=1e-9)
    assert mapping.spacing == (2.0, 2.0, 2.0)  # distances and the tolerance in world units (mm)


def test_nearest_neighbour_by_hand():
    data = np.arange(8, dtype=np.int32).reshape(2, 2, 2)
    mapping = GridMapping(np.zeros(3), np.eye(3) * 0.5, (1.0, 1.0, 1.0))  # a 4^3 grid over the 2^3 labels
    out = labels_on_grid(data, mapping, (4, 4, 4))
    # index x maps to x/2, rounded half up: 0->0, 1->1 (0.5), 2->1, 3->2 (outside -> 0)
    assert out[0, 0, 0] == 0 and out[1, 1, 1] == 7 and out[2, 0, 2] == 5 and out[3, 0, 0] == 0
    assert out[0, 0, 3] == 0 and out[0, 1, 2] == 3


def test_against_a_mask_on_another_grid(qtbot, viewer, widget, reader):
    panel = widget.evaluate
    labels = coarse_labels(viewer, reader)
    panel.choose_labels(labels)
    assert panel.mask_button.isEnabled()
    (scores,) = evaluate(qtbot, panel, panel.score_mask)
    assert scores.pointing_strict == 1.0 and scores.pointing_tolerant == 1.0 and scores.voxels == 64
    assert "half a patch (2 voxels)" in panel.tolerance_label.text()
    heatmap = widget.last_run.heatmap.astype(np.float64)
    region = reader.region().numpy()
    assert scores.energy == pytest.approx(heatmap[region].sum() / heatmap.sum(), rel=1e-6)
    layer = viewer.layers[widget.heatmaps.owned(viewer.layers, next(iter(widget.heatmaps._made))).name]
    assert layer.metadata["evaluation"]["mask"][0]["pointing_strict"] == 1.0
    assert "generator" in layer.metadata  # the rest of the metadata is kept
    assert "evaluation" not in viewer.layers["scan"].metadata and "evaluation" not in labels.metadata
    assert "label 1: pointing hit" in panel.verdict.text()


def test_against_the_model_with_a_recorded_baseline(qtbot, viewer, widget, reader):
    panel = widget.evaluate
    panel.choose_baseline("mean")
    result = evaluate(qtbot, panel, panel.check_model)
    assert isinstance(result, Faithfulness) and result.baseline == "mean"
    assert result.deletion.beats_random and result.deletion.auc < result.deletion.random_auc
    assert result.insertion.beats_random
    assert len(panel.plot.deletion.lines) == 2 and "AUC" in panel.plot.deletion.get_title()
    metadata = widget.last_run and viewer.layers[-1].metadata["evaluation"]["model"]
    assert metadata["baseline"] == "mean" and metadata["deletion"]["beats_random"] is True
    assert "beats random" in panel.verdict.text()


def run_method(qtbot, dock, method):
    dock.method_combo.setCurrentIndex(dock.method_combo.findData(method))
    with qtbot.waitSignal(dock.run_finished, timeout=TIMEOUT_MS) as blocker:
        assert dock.run()
    assert blocker.args[0] is not None


def test_the_occlusion_map_is_drawn_beside_the_map(qtbot, viewer, widget, reader):
    panel = widget.evaluate
    panel.choose_baseline("mean")
    assert panel.comparable_occlusion() is None and "computes it first" in panel.occlusion_check.text()
    panel.occlusion_check.setChecked(True)  # none computed yet: the panel computes one for the comparison
    made = evaluate(qtbot, panel, panel.check_model)
    assert list(made.deletion.compared) == ["occlusion"]
    assert made.deletion.compared_aucs["occlusion"] < made.deletion.random_aucs.min()
    labels = [line.get_label() for line in panel.plot.deletion.lines]
    assert len(labels) == 3 and labels[-1].startswith("occlusion (")
    assert "occlusion map: deletion AUC" in panel.verdict.text()
    assert (
        viewer.layers[-1].metadata["evaluation"]["model"]["deletion"]["compared"]["occlusion"]["auc"]
        == (made.deletion.compared_aucs["occlusion"])
    )
    panel.occlusion_check.setChecked(False)
    run_method(qtbot, widget, "occlusion")  # an occlusion run of the same volume and class is kept...
    assert panel.comparable_occlusion() is None and not panel.occlusion_check.isEnabled()  # ...it is the run itself
    alone = evaluate(qtbot, panel, panel.check_model)
    assert alone.deletion.compared == {}
    occlusion_map = widget.last_run.explanation.token_cam
    run_method(qtbot, widget, "hirescam")  # ...and drawn beside a later run's curves, without computing it again
    assert panel.comparable_occlusion() is not None and "from the occlusion run" in panel.occlusion_check.text()
    kept = evaluate(qtbot, panel, panel.check_model)
    np.testing.assert_array_equal(kept.deletion.compared["occlusion"], made.deletion.compared["occlusion"])
    np.testing.assert_array_equal(panel.comparable_occlusion().token_cam, occlusion_map)
    viewer.layers["scan"].data = reader.bright_input(seed=5)[0, 0].numpy()  # new data: the kept map no longer applies
    run_method(qtbot, widget, "hirescam")
    assert panel.comparable_occlusion() is None


def test_a_second_map_of_the_same_volume_reuses_the_random_band(qtbot, viewer, widget, reader):
    panel = widget.evaluate
    panel.choose_baseline("mean")
    first = evaluate(qtbot, panel, panel.check_model)
    run_method(qtbot, widget, "gradcam")  # another map of the same volume, class and model
    sizes: list[int] = []
    hook = reader.register_forward_pre_hook(lambda _module, args: sizes.append(int(args[0].shape[0])))
    try:
        second = evaluate(qtbot, panel, panel.check_model)
        assert sum(sizes) == 2 * 15  # only the new map's own curves ran
        np.testing.assert_array_equal(second.deletion.random, first.deletion.random)
        sizes.clear()
        panel.choose_baseline("blur")  # another baseline: another band
        evaluate(qtbot, panel, panel.check_model)
        assert sum(sizes) == 77
        sizes.clear()
        viewer.layers["scan"].data = reader.bright_input(seed=3)[0, 0].numpy()  # another volume: another band
        run_method(qtbot, widget, "hirescam")
        sizes.clear()
        evaluate(qtbot, panel, panel.check_model)
        assert sum(sizes) == 77
    finally:
        hook.remove()


def test_results_for_a_removed_heatmap_layer_say_where_they_are_kept(qtbot, viewer, widget):
    panel = widget.evaluate
    heatmap = panel.layer
    assert heatmap is not None
    viewer.layers.remove(heatmap)
    panel.choose_baseline("mean")
    evaluate(qtbot, panel, panel.check_model)
    assert "heatmap layer was removed" in panel.verdict.text()
    assert "evaluation" not in heatmap.metadata and panel.rows()


def test_a_reference_layer_as_the_baseline(qtbot, viewer, widget, reader):
    panel = widget.evaluate
    healthy = viewer.add_image(np.zeros((16, 16, 16), np.float32), name="healthy")
    panel.choose_baseline("reference", healthy)
    result = evaluate(qtbot, panel, panel.check_model)
    assert result.baseline == "reference"
    assert result.deletion.ranked[-1] == pytest.approx(0.5)  # all zeros: equal logits
    compared = evaluate(qtbot, panel, panel.compare_baselines)
    assert list(compared) == ["blur", "mean", "noise", "reference"]
    spread = viewer.layers["Grad-CAM · bright · embed"].metadata["evaluation"]["baselines"]["auc_spread"]
    aucs = [r.deletion.auc for r in compared.values()]
    assert spread["deletion"] == pytest.approx(max(aucs) - min(aucs))
    assert "moves" in panel.plot.deletion.get_title() and len(panel.plot.deletion.lines) == 4


def test_against_chance_leaves_the_model_as_it_was(qtbot, viewer, widget, reader):
    before = {k: v.clone() for k, v in reader.state_dict().items()}
    panel = widget.evaluate
    result = evaluate(qtbot, panel, panel.check_chance)
    assert isinstance(result, RandomizationResult)
    assert [s.randomized for s in result.steps] == ["head", "embed"]
    assert all(torch.equal(before[k], v) for k, v in reader.state_dict().items())
    recorded = viewer.layers["Grad-CAM · bright · embed"].metadata["evaluation"]["chance"]
    assert recorded["survives"] == result.survives and len(recorded["steps"]) == 2
    assert len(panel.plot.chance.lines) == 2  # the correlations and the threshold


def test_a_map_that_ignores_the_model_is_flagged(widget, reader):
    x = reader.bright_input()

    def intensity(model):  # each patch's mean input intensity: the same whatever the weights
        return torch.nn.functional.avg_pool3d(x, 4)[0, 0]

    panel = widget.evaluate
    panel.show_result("chance", cascading_randomization(reader, intensity))
    assert "SURVIVES randomisation" in panel.verdict.text()
    assert "SURVIVES" in panel.plot.chance.get_title()
    assert ("chance", "final", "survives", "yes") in panel.rows()


def test_copy_table_puts_every_number_on_the_clipboard(qtbot, viewer, widget, reader):
    panel = widget.evaluate
    panel.choose_labels(coarse_labels(viewer, reader))
    evaluate(qtbot, panel, panel.score_mask)
    panel.choose_baseline("mean")
    evaluate(qtbot, panel, panel.check_model)
    panel.copy_button.click()
    text = QApplication.clipboard().text()
    lines = text.splitlines()
    assert lines[0] == "check\titem\tmetric\tvalue"
    assert "mask\tlabel 1\tpointing_strict\t1" in lines
    assert "model\tbaseline mean\tdeletion_beats_random\tyes" in lines
    assert all(len(line.split("\t")) == 4 for line in lines)
    assert panel.table.rowCount() == len(lines) - 1


def test_a_new_run_starts_a_fresh_evaluation(qtbot, viewer, widget, reader):
    panel = widget.evaluate
    panel.choose_baseline("mean")
    evaluate(qtbot, panel, panel.check_model)
    assert panel.results
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        assert widget.run()
    assert not panel.results and panel.table.rowCount() == 0 and panel.run is widget.last_run


def test_a_mask_that_misses_the_volume_is_one_notification(qtbot, viewer, widget, notes):
    panel = widget.evaluate
    far = viewer.add_labels(np.ones((4, 4, 4), np.uint8), name="elsewhere", translate=(100, 100, 100))
    panel.choose_labels(far)
    with qtbot.waitSignal(panel.evaluated, timeout=TIMEOUT_MS) as blocker:
        assert panel.score_mask()
    assert blocker.args[1] is None
    assert any("no labelled voxel of 'elsewhere'" in str(n.message) for n in notes)
    assert panel.status.text() == "mask: failed" and not panel.busy


def test_the_dock_with_its_plot(qtbot, viewer, widget, reader, tmp_path):
    panel = widget.evaluate
    panel.choose_labels(coarse_labels(viewer, reader))
    evaluate(qtbot, panel, panel.score_mask)
    panel.choose_baseline("mean")
    evaluate(qtbot, panel, panel.check_model)
    evaluate(qtbot, panel, panel.check_chance)
    path = tmp_path / "evaluate.png"
    assert panel.grab().save(str(path))
    assert path.stat().st_size > 10_000


def test_a_vit_with_a_normalised_input_evaluates_end_to_end(qtbot, make_napari_viewer):
    """A transformer, a z-scored and resized input: the curves run on the exact model input, the cascade block by block."""
    viewer = make_napari_viewer()
    dock = VitcamWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Grad-CAM (3D ViT)")
    model = tiny_vit(size=16, patch=4, depth=2)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("a", "b"), target_layer="blocks.1.norm1")
    with qtbot.waitSignal(dock.load_finished, timeout=TIMEOUT_MS):
        assert dock.use_model(LoadedModel(model, spec))
    viewer.add_image(np.random.default_rng(0).normal(100, 20, (20, 24, 28)).astype(np.float32), name="scan")
    with qtbot.waitSignal(dock.run_finished, timeout=TIMEOUT_MS):
        assert dock.run()
    panel = dock.evaluate
    panel.choose_baseline("noise")
    curves = evaluate(qtbot, panel, panel.check_model)
    explanation = dock.last_run.explanation
    with torch.no_grad():
        x = model_input(LoadedModel(model, spec), viewer.layers["scan"].data, device="cpu")
        p = float(model(x).softmax(1)[0, explanation.class_idx])
    assert curves.deletion.ranked[0] == pytest.approx(p, abs=1e-5)  # nothing removed: the model's own answer
    assert curves.baseline == "noise" and curves.deletion.fractions[-1] == 1.0
    chance = evaluate(qtbot, panel, panel.check_chance)
    assert [s.randomized for s in chance.steps] == ["head", "blocks.1", "blocks.0", "embedding"]
    assert panel.rows()[-1][:3] == ("chance", "final", "survives")


def test_the_labels_list_follows_the_viewer(viewer):
    panel = EvaluatePanel(viewer, expanded=True)
    assert panel.labels_combo.count() == 0 and not panel.mask_button.isEnabled()
    lesion = viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="lesion")
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="flat")  # 2D: not a region of a volume
    assert [panel.labels_combo.itemText(i) for i in range(panel.labels_combo.count())] == ["lesion"]
    lesion.name = "tumour"
    assert panel.labels_combo.currentText() == "tumour" and panel.labels_layer() is lesion
    viewer.layers.remove(lesion)
    assert panel.labels_combo.count() == 0 and panel.labels_layer() is None
