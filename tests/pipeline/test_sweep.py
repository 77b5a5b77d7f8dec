"""Sweeps of a whole volume: each slice is the map explain_volume gives alone, on the volume's own grid."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_vitcam.core.errors import InputError
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import explain_volume, model_input
from napari_vitcam.pipeline.sweep import sweep_volume
from napari_vitcam.testing.models import tiny_vit
from napari_vitcam.testing.thirdparty import monai_vit


@pytest.fixture
def loaded():
    model = tiny_vit(size=16, patch=4, depth=3, width=16, classes=3)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("a", "b", "c"), "blocks.2.norm1")
    return LoadedModel(model, spec)


@pytest.fixture
def volume():
    return np.random.default_rng(3).normal(size=(20, 18, 22)).astype(np.float32)


def test_every_block_slice_equals_its_own_run(loaded, volume):
    sweep = sweep_volume(loaded, volume, over="blocks", class_idx="b", device="cpu")
    assert sweep.heatmaps.shape == (len(sweep.labels), 20, 18, 22) and sweep.over == "blocks"
    assert "blocks.0.norm1" in sweep.labels and "blocks.2.norm1" in sweep.labels
    assert set(sweep.class_idx) == {1} and sweep.target_layer is None
    for k, label in enumerate(sweep.labels):
        alone = explain_volume(loaded, volume, target_layer=label, class_idx="b", device="cpu")
        np.testing.assert_allclose(sweep.heatmaps[k], alone.heatmap, atol=1e-5)
        assert sweep.raw_max[k] == pytest.approx(alone.raw_max, rel=1e-4)
    np.testing.assert_allclose(sweep.probabilities, alone.probabilities, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "relevance"])
def test_every_class_slice_equals_its_own_run(loaded, volume, method):
    sweep = sweep_volume(loaded, volume, over="classes", method=method, device="cpu")
    assert sweep.labels == ("a", "b", "c") and sweep.class_idx == (0, 1, 2)
    for k, name in enumerate(sweep.labels):
        alone = explain_volume(loaded, volume, class_idx=name, method=method, device="cpu")
        np.testing.assert_allclose(sweep.heatmaps[k], alone.heatmap, atol=1e-5)


def test_a_block_sweep_needs_a_layer_method(loaded, volume):
    with pytest.raises(InputError, match="no block to sweep"):
        sweep_volume(loaded, volume, over="blocks", method="rollout")
    with pytest.raises(InputError, match="unknown sweep"):
        sweep_volume(loaded, volume, over="heads")  # type: ignore[arg-type]


class SoftmaxHead(nn.Module):
    """A stock MONAI ViT whose output is a distribution: the softmax of its logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.vit = monai_vit(size=16, patch=4, depth=2)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.vit(x)[0])


@pytest.mark.parametrize("over", ["blocks", "classes"])
def test_a_sweep_of_a_model_ending_in_softmax_reports_its_probabilities_as_explain_volume(volume, over):
    spec = ModelSpec(
        InputSpec(1, (16, 16, 16), Normalization("zscore")), ("a", "b"), "vit.blocks.1.norm1",
        score_layer="vit.classification_head.0",
    )  # fmt: skip
    loaded = LoadedModel(SoftmaxHead().eval(), spec)
    with torch.no_grad():
        own = loaded.model(model_input(loaded, volume, device="cpu"))[0].numpy()
    alone = explain_volume(loaded, volume, device="cpu")
    np.testing.assert_allclose(alone.probabilities, own, atol=1e-6)  # the model's own distribution
    swept = sweep_volume(loaded, volume, over=over, device="cpu")
    np.testing.assert_allclose(swept.probabilities, own, atol=1e-6)  # not a softmax of it
