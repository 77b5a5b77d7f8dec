"""The engine leaves the model as it found it, and diagnoses useless targets."""

import threading

import pytest
import torch
from torch import nn

import napari_vitcam as nv


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.vit = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2, dropout=0.1)
        self.explode = True

    def forward(self, x):
        logits = self.vit(x)
        if self.explode:
            raise RuntimeError("boom after the target")
        return logits


def snapshot(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        hook_count(model),
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def assert_same(model, before):
    flags, grads, hooks, state = before
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert hook_count(model) == hooks == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_state_restored_after_an_exception_mid_way():
    model = Exploding()
    model.train()
    model.vit.blocks[0].eval()  # a mixed state must come back as it was
    model.vit.patch_embed.requires_grad_(False)
    before = snapshot(model)
    grad_mode = torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "vit.blocks.1.norm1")
    assert torch.is_grad_enabled() == grad_mode
    assert_same(model, before)


def test_state_restored_after_success_and_eval_used_during_the_run():
    model = Exploding()
    model.explode = False
    model.train()
    before = snapshot(model)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    first = nv.grad_cam(model, x, "vit.blocks.1.norm1")
    second = nv.grad_cam(model, x, "vit.blocks.1.norm1")
    torch.testing.assert_close(first.cam, second.cam)  # dropout was off during the run
    assert_same(model, before)


def test_frozen_model_still_explained():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2).requires_grad_(False)
    result = nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "blocks.1.norm1")
    assert result.cam.max() > 0
    assert not any(p.requires_grad for p in model.parameters())


def test_zero_gradient_target_is_diagnosed_with_a_working_suggestion():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=3, heads=2)
    before = snapshot(model)
    with pytest.raises(nv.DegenerateTargetError, match=r"zero at every token of 'blocks.2'.*use 'blocks.2.norm1'"):
        nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "blocks.2")
    assert_same(model, before)


def test_target_after_the_score_and_unused_target():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    model.unused = nn.Linear(2, 2)
    x = torch.randn(1, 1, 16, 16, 16)
    with pytest.raises(nv.TargetLayerError, match="was not called"):
        nv.grad_cam(model, x, "unused")
    squashed = nn.Sequential(model, nn.Tanh())
    with pytest.raises(nv.TargetLayerError, match="does not depend on target layer '1'"):
        nv.grad_cam(squashed, x, "1", score_layer="0.head")
    assert hook_count(squashed) == 0


def test_cancel_stops_at_the_next_module_and_cleans_up():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(nv.Cancelled):
        nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "blocks.1.norm1", cancel=cancel)
    assert hook_count(model) == 0


def test_progress_reports_stages_in_order():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    stages = []
    result = nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "blocks.1.norm1", progress=stages.append)
    assert stages == ["forward", "backward", "map", "upsample"]
    assert set(result.timings) == set(stages)
