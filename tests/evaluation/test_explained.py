"""Evaluating one explained volume: the shared core of the widget's Evaluate section and ``napari-vitcam evaluate``."""

import dataclasses

import numpy as np
import pytest
import torch

from napari_vitcam.core.errors import InputError
from napari_vitcam.evaluation.explained import (
    against_chance,
    against_mask,
    against_model,
    auc_spread,
    compare_baseline_curves,
    explain_alike,
    patch_tolerance,
    table_rows,
)
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import explain_volume


@pytest.fixture
def case(region_reader):
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("none")), ("dark", "bright"), target_layer="embed")
    loaded = LoadedModel(region_reader, spec)
    volume = region_reader.bright_input()[0, 0].numpy()
    explanation = explain_volume(loaded, volume, class_idx=1, method="hirescam", device="cpu")
    return loaded, volume, explanation


def test_half_a_patch_by_hand(case):
    _, _, explanation = case
    assert patch_tolerance(explanation) == 2.0  # 4-voxel patches, volume at the model's size
    assert patch_tolerance(explanation, (3.0, 1.0, 1.0)) == 6.0  # in mm: the longest extent, 12 mm
    resized = dataclasses.replace(explanation, heatmap=np.zeros((32, 16, 8), np.float32))
    assert patch_tolerance(resized) == 4.0  # a 32-voxel axis squeezed into 16: a patch spans 8 voxels
    resampled = dataclasses.replace(
        explanation,
        preprocessing={
            "fit": "crop_or_pad",
            "model_spacing_mm": [2.0, 2.0, 2.0],
            "volume_spacing_mm": [1.0, 1.0, 0.5],
            "reorientation": {"order": [2, 1, 0], "flips": [False, False, False]},
        },
    )
    assert patch_tolerance(resampled) == 8.0  # 4 model voxels of 2 mm over 0.5 mm voxels: 16 volume voxels
    assert patch_tolerance(resampled, (0.5, 1.0, 1.0)) == 4.0  # 8 mm either way, whatever the voxel


def test_the_read_patch_is_found_against_the_mask_the_model_and_chance(case, region_reader):
    loaded, volume, explanation = case
    (scores,) = against_mask(explanation, region_reader.region().numpy().astype(np.uint8))
    assert scores.pointing_strict == 1.0 and scores.label == 1
    curves = against_model(loaded, volume, explanation, baseline="mean")
    assert curves.deletion.beats_random and curves.insertion.beats_random and curves.baseline == "mean"
    before = {k: v.clone() for k, v in region_reader.state_dict().items()}
    chance = against_chance(loaded, volume, explanation)
    assert [s.randomized for s in chance.steps] == ["head", "embed"]
    assert all(torch.equal(before[k], v) for k, v in region_reader.state_dict().items())
    rows = table_rows([scores], curves, None, chance)
    assert ("mask", "label 1", "pointing_strict", "1") in rows
    assert ("model", "baseline mean", "deletion_beats_random", "yes") in rows


def test_the_occlusion_map_is_drawn_beside_the_map(case, region_reader):
    loaded, volume, explanation = case
    occlusion = explain_alike(loaded, volume, explanation, "occlusion")
    assert occlusion.method == "occlusion" and occlusion.class_idx == 1 and occlusion.grid == explanation.grid
    assert int(np.argmax(occlusion.token_cam)) == int(np.argmax(explanation.token_cam))  # both find the read patch
    curves = against_model(loaded, volume, explanation, baseline="mean", compared={"occlusion": occlusion})
    assert curves.deletion.compared_aucs["occlusion"] < curves.deletion.random_aucs.min()
    assert curves.insertion.compared_aucs["occlusion"] > curves.insertion.random_aucs.max()
    summary = curves.summary()
    assert summary["deletion_auc_occlusion"] == curves.deletion.compared_aucs["occlusion"]
    rows = table_rows([], curves)
    assert ("model", "baseline mean", "insertion_auc_occlusion", f"{summary['insertion_auc_occlusion']:.6g}") in rows
    other_class = explain_volume(loaded, volume, class_idx=0, method="occlusion", device="cpu")
    with pytest.raises(InputError, match="explains class 'dark' but this map 'bright'"):
        against_model(loaded, volume, explanation, compared={"occlusion": other_class})
    dimmer = region_reader.bright_input(level=0.3)[0, 0].numpy()
    other_volume = explain_alike(loaded, dimmer, explanation, "occlusion")
    assert abs(other_volume.probabilities[1] - explanation.probabilities[1]) > 1e-3
    with pytest.raises(InputError, match="another volume or model"):
        against_model(loaded, volume, explanation, compared={"occlusion": other_volume})


def test_baselines_are_compared_and_the_reference_added(case):
    loaded, volume, explanation = case
    heard: list[tuple[int, int]] = []
    results = compare_baseline_curves(
        loaded, volume, explanation, reference=np.zeros_like(volume), steps=4, progress=lambda *a: heard.append(a)
    )
    per_baseline = 3 * (2 + 3) + 2  # 3 inner points for the map's 2 curves and 3 random orders, the input, the baseline
    assert heard[-1] == (4 * per_baseline, 4 * per_baseline)  # counted over the four baselines
    assert [done for done, _ in heard] == sorted(done for done, _ in heard)
    assert list(results) == ["blur", "mean", "noise", "reference"]
    aucs = [r.insertion.auc for r in results.values()]
    assert auc_spread(results)["insertion"] == pytest.approx(max(aucs) - min(aucs))
    assert results["reference"].deletion.ranked[-1] == pytest.approx(0.5)  # all zeros: equal logits


def test_wrong_inputs_are_one_line(case):
    loaded, volume, explanation = case
    with pytest.raises(InputError, match="mask has shape"):
        against_mask(explanation, np.ones((8, 8, 8), np.uint8))
    with pytest.raises(InputError, match="needs a reference volume"):
        against_model(loaded, volume, explanation, baseline="reference")
    with pytest.raises(InputError, match="unknown baseline"):
        against_model(loaded, volume, explanation, baseline="paint")
    with pytest.raises(InputError, match="reference volume has shape"):
        against_model(loaded, volume, explanation, baseline="reference", reference=np.zeros((4, 4, 4)))
    with pytest.raises(InputError, match="no token grid"):
        against_model(loaded, volume, dataclasses.replace(explanation, grid=None))
