"""Token readout (the demo model's training aid) against the model itself."""

import math

import pytest
import torch

from napari_vitcam.demo.token_readout import (
    ReadoutCapture,
    pooling_on_lesion_loss,
    readout_logits,
    readout_loss,
    token_lesion_share,
)
from napari_vitcam.demo.train import fan_in_init
from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig


def small_vit(pool="cls"):
    torch.manual_seed(0)
    model = ViT3D(ViTConfig(img_size=(16, 12, 8), patch_size=4, width=16, depth=2, heads=4, num_classes=3, pool=pool))
    fan_in_init(model)  # unit-scale weights so that every path matters
    return model.eval()


def forced_readout(model, x, token):
    """Logits with the last block's cls-token attention replaced by a one-hot on patch ``token``."""

    def one_hot(module, inputs, weights):
        weights = weights.clone()
        weights[:, :, 0, :] = 0.0
        weights[:, :, 0, 1 + token] = 1.0
        return weights

    attention = model.blocks[-1].attn
    attention.expose_probs = True
    handle = attention.probs.register_forward_hook(one_hot)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()
        attention.expose_probs = False


def test_readout_is_the_model_reading_one_token():
    model = small_vit()
    x = torch.randn(2, 1, 16, 12, 8)
    with ReadoutCapture(model) as capture, torch.no_grad():
        model(x)
        logits = capture.logits()
    n_tokens = 4 * 3 * 2
    assert logits.shape == (2, n_tokens, 3)
    for token in (0, 7, n_tokens - 1):
        torch.testing.assert_close(logits[:, token], forced_readout(model, x, token), rtol=1e-4, atol=1e-5)
    # Different tokens read differently (the check above is not vacuous).
    assert not torch.allclose(logits[:, 0], logits[:, 7], atol=1e-3)


def test_readout_needs_a_cls_token():
    model = small_vit(pool="mean")
    with pytest.raises(ValueError, match="cls-token"):
        readout_logits(model, torch.zeros(1, 24, 16))


@pytest.mark.parametrize("pool", ["attn", "mean"])
def test_pooled_readout_gives_the_logits_by_its_pooling_weights(pool):
    model = small_vit(pool)
    x = torch.randn(2, 1, 16, 12, 8)
    with ReadoutCapture(model) as capture, torch.no_grad():
        logits = model(x)
        readouts = capture.logits()
        pooling = capture.pooling
        features = model.forward_features(x)
        weights = (
            model.attn_pool.score(features).squeeze(-1).softmax(-1) if pool == "attn" else torch.full((2, 24), 1 / 24)
        )
    assert readouts.shape == (2, 24, 3)
    if pool == "attn":
        torch.testing.assert_close(pooling, weights)
    else:
        assert pooling is None
    torch.testing.assert_close((weights[..., None] * readouts).sum(1), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", ["cls", "attn"])
def test_readout_capture_removes_its_hook_even_on_error(pool):
    model = small_vit(pool)
    shapes = []
    capture = ReadoutCapture(model)

    def use_then_fail() -> None:
        with capture:
            with pytest.raises(RuntimeError, match="no forward pass"):
                capture.logits()
            model(torch.randn(1, 1, 16, 12, 8))
            shapes.append(capture.value.shape)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use_then_fail()
    assert shapes == [(1, 1 + 24, 16) if pool == "cls" else (1, 24, 16)]
    assert not model.blocks[-1]._forward_pre_hooks and not model.norm._forward_hooks
    assert capture.value is None


def test_token_lesion_share_follows_the_patch_embedding_order():
    masks = torch.zeros(1, 16, 12, 8, dtype=torch.bool)
    masks[0, 4:6, 8:12, 0:4] = True  # half of the patch at grid (1, 2, 0)
    masks[0, 15, 11, 7] = True  # one voxel of the last patch (3, 2, 1)
    share = token_lesion_share(masks, (4, 4, 4))
    grid = (4, 3, 2)
    expected = torch.zeros(grid)
    expected[1, 2, 0] = 0.5
    expected[3, 2, 1] = 1 / 64
    torch.testing.assert_close(share, expected.flatten()[None])
    # The same order as the model's tokens: the patch embedding of a volume that is 1
    # only in that half patch has its largest response at the same token.
    model = small_vit()
    with torch.no_grad():
        embedded = model.patch_embed.proj(masks[:, None].float()).flatten(2)
    changed = (embedded - model.patch_embed.proj.bias[None, :, None]).abs().sum(1)[0]
    assert set(changed.nonzero()[:, 0].tolist()) == set(share[0].nonzero()[:, 0].tolist())


def test_readout_loss_is_zero_when_neutral_and_counts_only_chosen_tokens():
    logits = torch.zeros(2, 5, 2)
    neutral = torch.ones(2, 5, dtype=torch.bool)
    assert float(readout_loss(logits, neutral)) == pytest.approx(0.0, abs=1e-7)
    logits[0, 1] = torch.tensor([3.0, -3.0])
    loss = float(readout_loss(logits, neutral))
    expected = (-torch.tensor([3.0, -3.0]).log_softmax(0).mean() - math.log(2)) / 10
    assert loss == pytest.approx(float(expected), rel=1e-5)
    neutral[0, 1] = False  # the opinionated token is not held to neutrality
    assert float(readout_loss(logits, neutral)) == pytest.approx(0.0, abs=1e-7)
    assert float(readout_loss(logits, torch.zeros_like(neutral))) == 0.0


def test_readout_loss_top_weighs_the_most_opinionated_tokens():
    logits = torch.zeros(2, 6, 2)
    logits[0, 2] = torch.tensor([2.0, -2.0])
    neutral = torch.ones(2, 6, dtype=torch.bool)
    cost = float(-torch.tensor([2.0, -2.0]).log_softmax(0).mean() - math.log(2))
    assert float(readout_loss(logits, neutral)) == pytest.approx(cost / 12, rel=1e-5)
    # top=1: plus the mean over the volumes of each one's largest cost (cost and 0).
    assert float(readout_loss(logits, neutral, top=1)) == pytest.approx(cost / 12 + cost / 2, rel=1e-5)
    neutral[0, 2] = False  # a lesion token is never among the neutral ones
    assert float(readout_loss(logits, neutral, top=1)) == pytest.approx(0.0, abs=1e-7)


def test_pooling_on_lesion_loss():
    pooling = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    lesion = torch.tensor([[True, False, False], [False, False, True], [False, False, False]])
    has_lesion = torch.tensor([True, True, False])  # the third volume is lesion-free: not counted
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert float(pooling_on_lesion_loss(pooling, lesion, has_lesion)) == pytest.approx(expected, rel=1e-6)
    assert float(pooling_on_lesion_loss(pooling, lesion, torch.zeros(3, dtype=torch.bool))) == 0.0
