"""The cascading randomisation test: maps that depend on the model change, maps that ignore it are flagged."""

import numpy as np
import pytest
import torch

from napari_vitcam.engine.cam import grad_cam
from napari_vitcam.evaluation.randomization import cascade, cascading_randomization, rank_correlation
from napari_vitcam.testing.models import tiny_vit


def test_rank_correlation_by_hand():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks (1.5, 1.5, 3) and (1, 2, 3) -> r = 0.866...
    assert rank_correlation([5, 5, 9], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)
    assert rank_correlation([1, 1, 1], [1, 2, 3]) == 0.0


def test_cascade_goes_top_down_for_a_vit():
    model = tiny_vit(depth=3)
    steps = [name for name, _ in cascade(model)]
    assert steps == ["head", "blocks.2", "blocks.1", "blocks.0", "embedding"]
    head = dict(cascade(model))["head"]
    assert any(item is model.norm for item in head) and any(item is model.head for item in head)
    embedding = dict(cascade(model))["embedding"]
    assert any(item is model.patch_embed for item in embedding) and any(item is model.pos_embed for item in embedding)


def test_grad_cam_changes_and_an_input_copy_survives():
    model = tiny_vit(depth=2, size=16, patch=4, width=16)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def gradcam(m):
        return grad_cam(m, x, "blocks.1.norm1", 0).token_cam[0]

    def intensity(m):  # a "map" that ignores the model: each patch's mean input intensity
        return torch.nn.functional.avg_pool3d(x, 4)[0, 0]

    learnt = cascading_randomization(model, gradcam, seed=0)
    assert [s.randomized for s in learnt.steps] == ["head", "blocks.1", "blocks.0", "embedding"]
    assert not learnt.survives and learnt.final_correlation < 0.5
    ignoring = cascading_randomization(model, intensity, seed=0)
    assert ignoring.survives and all(s.correlation == pytest.approx(1.0) for s in ignoring.steps)
    assert "survives randomisation" in ignoring.line and "changes" in learnt.line
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the loaded model was modified"
