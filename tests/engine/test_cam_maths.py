"""Grad-CAM maths against hand computation, token order, batches, grad modes."""

import numpy as np
import pytest
import torch
from torch import nn

import napari_vitcam as nv


class TinyTokenModel(nn.Module):
    """Conv3d patch embedding, a cls token, an identity target, a tanh read-out of all tokens."""

    def __init__(self, patch=(2, 2, 2), grid=(2, 2, 2), width=3, classes=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Conv3d(1, width, kernel_size=patch, stride=patch)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(self.embed.weight.shape, generator=g))
            self.embed.bias.copy_(torch.randn(width, generator=g))
        self.cls = nn.Parameter(torch.randn(1, 1, width, generator=g))
        n = grid[0] * grid[1] * grid[2]
        self.readout = nn.Parameter(torch.randn(classes, n + 1, width, generator=g))
        self.target = nn.Identity()

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        a = self.target(tokens)
        return torch.einsum("cte,bte->bc", self.readout, torch.tanh(a))


def hand_gradcam(model: TinyTokenModel, x: np.ndarray, c: int, patch, grid) -> np.ndarray:
    """Grad-CAM for TinyTokenModel, from the formulas, in numpy."""
    pd, ph, pw = patch
    d, h, w = grid
    weight = model.embed.weight.detach().numpy()  # (E, 1, pd, ph, pw)
    bias = model.embed.bias.detach().numpy()
    vol = x[0, 0, : d * pd, : h * ph, : w * pw]
    patches = vol.reshape(d, pd, h, ph, w, pw).transpose(0, 2, 4, 1, 3, 5).reshape(d * h * w, -1)
    a = patches @ weight.reshape(weight.shape[0], -1).T + bias  # (N, E), row-major (d, h, w)
    v = model.readout.detach().numpy()[c, 1:]  # patch tokens' read-out (N, E)
    grads = v * (1.0 - np.tanh(a) ** 2)  # dy^c / dA
    alpha = grads.mean(axis=0)
    return np.maximum(a @ alpha, 0.0).reshape(d, h, w)


@pytest.mark.parametrize("c", [0, 1])
def test_gradcam_matches_hand_computation(c):
    patch, grid = (2, 3, 2), (3, 2, 2)
    model = TinyTokenModel(patch, grid)
    x = torch.randn(1, 1, 6, 6, 4, generator=torch.Generator().manual_seed(3))
    result = nv.grad_cam(model, x, "target", class_idx=c, upsample="patch")
    expected = hand_gradcam(model, x.numpy(), c, patch, grid)
    assert expected.max() > 0
    np.testing.assert_allclose(result.token_cam[0].numpy(), expected, atol=1e-5, rtol=1e-5)
    # patch mode: each token fills its patch
    np.testing.assert_allclose(
        result.cam[0].numpy(),
        expected.repeat(patch[0], 0).repeat(patch[1], 1).repeat(patch[2], 2),
        atol=1e-5,
    )
    assert result.layout.prefix == 1
    assert result.class_idx.tolist() == [c]
    np.testing.assert_allclose(result.logits.numpy(), model(x).detach().numpy(), atol=1e-6)


class OneTokenModel(nn.Module):
    """Anisotropic patches; the score reads one known patch token only."""

    def __init__(self, patch, hot_token):
        super().__init__()
        self.patch_embed = nn.Conv3d(1, 4, kernel_size=patch, stride=patch, bias=False)
        nn.init.constant_(self.patch_embed.weight, 1.0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.target = nn.Identity()
        self.hot = hot_token

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = self.target(torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1))
        score = t[:, 1 + self.hot].sum(-1, keepdim=True)
        return torch.cat([score, -score], dim=1)


@pytest.mark.parametrize("hot", [(1, 1, 1), (2, 1, 1), (0, 0, 0), (1, 2, 0), (3, 1, 2)])
def test_map_peaks_in_the_scored_token_at_its_centre(hot):
    patch = (2, 4, 3)
    shape = (9, 14, 11)  # not multiples of the patch: grid (4, 3, 3), one extra voxel layer or more
    grid = (4, 3, 3)
    flat = (hot[0] * grid[1] + hot[1]) * grid[2] + hot[2]
    model = OneTokenModel(patch, flat)
    x = torch.zeros(1, 1, *shape)
    lo = [h * p for h, p in zip(hot, patch, strict=False)]
    x[0, 0, lo[0] : lo[0] + patch[0], lo[1] : lo[1] + patch[1], lo[2] : lo[2] + patch[2]] = 1.0

    patch_map = nv.grad_cam(model, x, "target", 0, upsample="patch").cam[0]
    assert patch_map.shape == shape
    inside = torch.zeros(shape, dtype=torch.bool)
    inside[lo[0] : lo[0] + patch[0], lo[1] : lo[1] + patch[1], lo[2] : lo[2] + patch[2]] = True
    assert patch_map[inside].min() > 0 and patch_map[~inside].max() == 0

    smooth = nv.grad_cam(model, x, "target", 0, upsample="smooth").cam[0]
    peaks = torch.nonzero(smooth == smooth.max())
    assert inside[tuple(peaks.T)].all()  # the maximum lies in the scored token's patch
    centre = [low + p / 2 - 0.5 for low, p in zip(lo, patch, strict=False)]  # voxel-index centre of the patch
    interior = [0 < h < g - 1 for h, g in zip(hot, grid, strict=False)]
    for axis in range(3):
        along = peaks[:, axis].float()
        if interior[axis]:  # peak exactly at the patch centre (mean of the tied centre voxels)
            assert along.mean().item() == pytest.approx(centre[axis])
        else:  # the outer half-patch is clamped flat: the plateau runs from the edge to the centre
            assert (along - centre[axis]).abs().min() <= 0.5
    # voxels beyond the last whole patch were never seen: 0
    assert smooth[8:].abs().max() == 0 and smooth[:, 12:].abs().max() == 0 and smooth[:, :, 9:].abs().max() == 0


def test_batch_of_two_each_with_its_own_class():
    model = nv.ViT3D(img_size=(16, 24, 16), patch_size=(8, 8, 4), width=32, depth=2, heads=2, num_classes=3)
    x = torch.randn(2, 1, 16, 24, 16, generator=torch.Generator().manual_seed(0))
    both = nv.grad_cam(model, x, "blocks.1.norm1", class_idx=[2, 0])
    assert both.class_idx.tolist() == [2, 0]
    for i, c in enumerate([2, 0]):
        alone = nv.grad_cam(model, x[i : i + 1], "blocks.1.norm1", class_idx=c)
        torch.testing.assert_close(both.cam[i], alone.cam[0], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(both.token_cam[i], alone.token_cam[0], atol=1e-6, rtol=1e-4)
    assert not torch.allclose(both.cam[0], both.cam[1])


def test_predicted_class_is_the_default():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2, num_classes=4)
    x = torch.randn(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    result = nv.grad_cam(model, x, "blocks.1.norm1")
    assert result.class_idx.tolist() == model(x).argmax(1).tolist()


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_runs_inside_no_grad_and_inference_mode(mode):
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    reference = nv.grad_cam(model, x, "blocks.1.norm1")
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        inner = nv.grad_cam(model, x, "blocks.1.norm1")
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(inner.cam, reference.cam)
    assert reference.cam.max() > 0


def test_no_parameter_gradients_are_left_behind():
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    nv.grad_cam(model, torch.randn(1, 1, 16, 16, 16), "blocks.0.norm1")
    assert all(p.grad is None for p in model.parameters())


def test_methods_table_gives_different_maps():
    model = nv.ViT3D(img_size=16, patch_size=4, width=32, depth=2, heads=2)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    maps = {m: nv.explain_tokens(model, x, m, "blocks.1.norm1").token_cam for m in nv.EXPLAINERS}
    assert set(maps) >= {"gradcam", "hirescam", "layercam", "gradcampp", "xgradcam", "eigencam", "scorecam"}
    assert set(maps) >= {"rollout", "relevance", "occlusion"}
    assert all(m.shape == (1, 4, 4, 4) and bool(torch.isfinite(m).all()) for m in maps.values())
    assert not torch.allclose(maps["gradcam"], maps["hirescam"])
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        nv.grad_cam(model, x, "blocks.1.norm1", method="nope")
