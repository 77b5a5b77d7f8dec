"""Grad-CAM++, XGrad-CAM, Eigen-CAM, Score-CAM and occlusion.

The references below are pytorch-grad-cam 1.5.7's formulas, transcribed from
its source (``grad_cam_plusplus.py``, ``xgrad_cam.py``,
``utils/svd_on_activations.py``, ``base_cam.py``) in numpy on channel-first
(B, C, d, h, w) arrays, as it computes them for 3D inputs. The package itself
cannot be imported beside this torch (its ``utils.image`` imports torchvision),
so its functions are not called here.
"""

import numpy as np
import pytest
import torch
from torch import nn

import napari_vitcam as nv
from napari_vitcam.engine.explainers import PerturbationInputs
from napari_vitcam.engine.explainers.occlusion import Occlusion
from napari_vitcam.engine.token_grid import TokenGrid
from napari_vitcam.testing.models import BoxOnly


def pgc_gradcam_plusplus_weights(activations, grads):
    grads_power_2 = grads**2
    grads_power_3 = grads_power_2 * grads
    spatial_axes = tuple(range(2, activations.ndim))
    sum_activations = np.sum(activations, axis=spatial_axes)
    sum_activations = sum_activations.reshape(sum_activations.shape + (1,) * len(spatial_axes))
    eps = 0.000001
    aij = grads_power_2 / (2 * grads_power_2 + sum_activations * grads_power_3 + eps)
    aij = np.where(grads != 0, aij, 0)
    weights = np.maximum(grads, 0) * aij
    return np.sum(weights, axis=spatial_axes)


def pgc_xgradcam_weights(activations, grads):
    spatial_axes = tuple(range(2, activations.ndim))
    sum_activations = np.sum(activations, axis=spatial_axes)
    sum_activations = sum_activations.reshape(sum_activations.shape + (1,) * len(spatial_axes))
    eps = 1e-7
    weights = grads * activations / (sum_activations + eps)
    return weights.sum(axis=spatial_axes)


def pgc_cam(weights, activations):
    """BaseCAM.get_cam_image for 5D activations, then compute_cam_per_layer's ReLU (before scaling)."""
    cam = (weights[:, :, None, None, None] * activations).sum(axis=1)
    return np.maximum(cam, 0)


def pgc_eigencam(activation_batch):
    """get_2d_projection_with_sign_correction, then the ReLU."""
    activation_batch = activation_batch.copy()
    activation_batch[np.isnan(activation_batch)] = 0
    projections = []
    for activations in activation_batch:
        reshaped = activations.reshape(activations.shape[0], -1).transpose()
        reshaped = reshaped - reshaped.mean(axis=0)
        _, _, vt = np.linalg.svd(reshaped, full_matrices=True)
        projection = reshaped @ vt[0, :]
        projection = projection.reshape(activations.shape[1:])
        if abs(projection.min()) > abs(projection.max()):
            projection = -projection
        projections.append(projection)
    return np.maximum(np.float32(projections), 0)


def layer_and_gradient(model, x, layer, classes):
    """The target's output and the summed class scores' gradient there, read with plain hooks."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    logits = model(x)
    handle.remove()
    score = logits.gather(1, torch.as_tensor(classes)[:, None]).sum()
    (grad,) = torch.autograd.grad(score, seen[0])
    return seen[0].detach(), grad


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 8, 2, stride=2), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


REFERENCES = {
    "gradcampp": lambda a, g: pgc_cam(pgc_gradcam_plusplus_weights(a, g), a),
    "xgradcam": lambda a, g: pgc_cam(pgc_xgradcam_weights(a, g), a),
    "eigencam": lambda a, g: pgc_eigencam(a),
}


@pytest.mark.parametrize("method", list(REFERENCES))
def test_equal_to_pytorch_grad_cam_on_a_5d_feature_map(method):
    torch.manual_seed(0)
    model = SmallCnn().eval()
    x = torch.randn(2, 1, 8, 8, 8)
    classes = [2, 0]
    result = nv.explain_tokens(model, x, method, "features.3", class_idx=classes)
    a, g = layer_and_gradient(model, x, model.features[3], classes)
    expected = REFERENCES[method](a.double().numpy(), g.double().numpy())
    np.testing.assert_allclose(result.token_cam.numpy(), expected, atol=1e-5, rtol=1e-4)
    assert result.token_cam.shape == (2, 4, 4, 4)


@pytest.mark.parametrize("method", list(REFERENCES))
def test_equal_to_pytorch_grad_cam_on_vit_tokens_with_its_reshape_transform(method):
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=(8, 16, 12), patch_size=(4, 4, 4), width=32, depth=2, heads=2).eval()
    x = torch.randn(2, 1, 8, 16, 12)
    classes = [1, 1]
    result = nv.explain_tokens(model, x, method, "blocks.1.norm1", class_idx=classes)
    a, g = layer_and_gradient(model, x, model.blocks[1].norm1, classes)

    def reshape_transform(t):  # what a pytorch-grad-cam user writes for a cls-token 3D ViT
        return t[:, 1:].reshape(t.shape[0], 2, 4, 3, t.shape[-1]).permute(0, 4, 1, 2, 3)

    expected = REFERENCES[method](reshape_transform(a).double().numpy(), reshape_transform(g).double().numpy())
    np.testing.assert_allclose(result.token_cam.numpy(), expected, atol=1e-5, rtol=1e-4)


def test_score_cam_equals_its_formula_and_does_not_depend_on_the_batch_size():
    torch.manual_seed(2)
    model = nv.ViT3D(img_size=16, patch_size=8, width=16, depth=1, heads=2).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    small = nv.explain_tokens(model, x, "scorecam", "blocks.0.norm1", class_idx=1, batch_size=3)
    large = nv.explain_tokens(model, x, "scorecam", "blocks.0.norm1", class_idx=1, batch_size=64)
    torch.testing.assert_close(small.token_cam, large.token_cam)
    # the formula, one channel at a time: mask = min-max scaled channel map, trilinear to voxels
    a, _ = layer_and_gradient(model, x, model.blocks[0].norm1, [1])
    tokens = a[0, 1:]  # (8, E)
    scores = []
    for k in range(tokens.shape[1]):
        channel = tokens[:, k].reshape(1, 1, 2, 2, 2)
        channel = (channel - channel.min()) / (channel.max() - channel.min() + 1e-8)
        mask = nn.functional.interpolate(channel, size=(16, 16, 16), mode="trilinear", align_corners=False)
        with torch.no_grad():
            scores.append(model(x * mask)[0, 1])
    weights = torch.stack(scores).softmax(0)
    expected = (tokens @ weights).relu().reshape(1, 2, 2, 2)
    torch.testing.assert_close(small.token_cam, expected, atol=1e-5, rtol=1e-4)


class PatchSums(nn.Module):
    """Class 0 = sum over patches of w_t * (patch sum); class 1 its negative."""

    def __init__(self, weights):
        super().__init__()
        self.patch_embed = nn.Conv3d(1, 1, kernel_size=4, stride=4, bias=False)
        nn.init.constant_(self.patch_embed.weight, 1.0)
        self.register_buffer("w", weights)

    def forward(self, x):
        t = self.patch_embed(x).flatten(1)
        score = (t * self.w).sum(1, keepdim=True)
        return torch.cat([score, -score], 1)


def test_occlusion_is_each_patch_drop_in_score_batched_on_the_grid():
    weights = torch.arange(1.0, 9.0)
    model = PatchSums(weights)
    x = torch.rand(2, 1, 8, 8, 8)
    result = nv.explain_tokens(model, x, "occlusion", class_idx=0, batch_size=3)
    sums = nn.functional.avg_pool3d(x, 4).flatten(1) * 64
    expected = (sums * weights).reshape(2, 2, 2, 2)
    torch.testing.assert_close(result.token_cam, expected, atol=1e-4, rtol=1e-5)
    # the other class: occluding raises its score, so no positive evidence anywhere
    assert not bool(nv.explain_tokens(model, x, "occlusion", class_idx=1).token_cam.any())


def box_only_monai_vit(seed: int) -> nn.Module:
    """A stock MONAI ViT (2 channels, anisotropic 4x8x2 patches) that sees one patch, token (2, 2, 2), only."""
    from monai.networks.nets import ViT

    torch.manual_seed(seed)
    backbone = ViT(
        in_channels=2, img_size=(16, 32, 8), patch_size=(4, 8, 2), hidden_size=32, mlp_dim=64, num_layers=2,
        num_heads=2, classification=True, num_classes=3, spatial_dims=3, post_activation="",
    )  # fmt: skip
    return BoxOnly(backbone, (16, 32, 8), ((8, 12), (16, 24), (4, 6))).eval()


@pytest.mark.parametrize(("seed", "class_idx"), [(0, 1), (1, 2), (3, 0)])
def test_occlusion_of_patches_a_third_party_model_ignores_is_exactly_zero(seed, class_idx):
    # Scores of identical inputs differ in the last bits between batches of different sizes; such
    # rounding is no evidence, and normalised to [0, 1] it would fill the whole heatmap.
    model = box_only_monai_vit(seed)
    x = torch.randn(2, 2, 16, 32, 8, generator=torch.Generator().manual_seed(seed))
    token_cam = nv.explain_tokens(model, x, "occlusion", class_idx=class_idx).token_cam
    outside = token_cam.clone()
    outside[:, 2, 2, 2] = 0
    assert not bool(outside.any())
    # where occluding the box itself lowers the score, that is the map; where it does not, the map is empty
    x_box = x.clone()
    x_box[:, :, 8:12, 16:24, 4:6] = 0
    drop = model(x)[0][:, class_idx] - model(x_box)[0][:, class_idx]
    torch.testing.assert_close(token_cam[:, 2, 2, 2], drop.relu().detach(), atol=1e-5, rtol=1e-4)


def test_occlusion_cells_cover_anisotropic_and_fractional_patches():
    grid = TokenGrid((2, 3, 1), (4.0, 2.5, 8.0), (8, 8, 8))
    x = torch.ones(1, 1, 8, 8, 8)
    seen = []

    def score(batch):
        seen.append(batch.clone())
        return batch.sum(dim=(1, 2, 3, 4))

    drops = Occlusion().token_map(PerturbationInputs(x, score, grid, batch_size=4))
    # cells along h cover voxels [0, 2), [2, 5), [5, 7): 2, 3 and 2 rows of 4 x 8 voxels
    assert drops.reshape(2, 3).tolist() == [[64.0, 96.0, 64.0], [64.0, 96.0, 64.0]]


def test_layer_methods_without_gradients_skip_the_backward_even_at_a_zero_gradient_layer():
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=16, depth=2, heads=2).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    # the last block's output: the score's gradient is zero at every patch token (cls-token ViT)
    with pytest.raises(nv.DegenerateTargetError):
        nv.explain_tokens(model, x, "gradcampp", "blocks.1")
    result = nv.explain_tokens(model, x, "eigencam", "blocks.1")
    assert bool((result.token_cam > 0).any())


def test_eigen_cam_is_class_agnostic():
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=4, width=16, depth=2, heads=2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    maps = [nv.explain_tokens(model, x, "eigencam", "blocks.1.norm1", class_idx=c).token_cam for c in (0, 1)]
    torch.testing.assert_close(maps[0], maps[1])
    assert bool((maps[0] > 0).any())
