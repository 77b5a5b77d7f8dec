"""Token map -> voxels: patch filling, trilinear equivalence, resized outputs, unseen voxels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_vitcam.engine.token_grid import TokenGrid, grid_from_patches, grid_over_input
from napari_vitcam.engine.voxel_map import tokens_to_voxels


def random_map(shape, seed=0):
    return torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed))


def test_patch_mode_fills_each_patch():
    grid = grid_from_patches((8, 12, 6), (2, 4, 3))
    tokens = random_map(grid.shape)
    expected = tokens.repeat_interleave(2, 1).repeat_interleave(4, 2).repeat_interleave(3, 3)
    torch.testing.assert_close(tokens_to_voxels(tokens, grid, mode="patch"), expected)


def test_smooth_mode_is_trilinear_without_corner_alignment():
    grid = grid_from_patches((16, 24, 12), (4, 8, 2))
    tokens = random_map(grid.shape, 1)
    expected = F.interpolate(tokens[:, None], size=(16, 24, 12), mode="trilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(tokens_to_voxels(tokens, grid, mode="smooth"), expected)


def test_smooth_mode_never_overshoots():
    grid = grid_from_patches((32, 32, 32), (8, 8, 8))
    tokens = random_map(grid.shape, 2)
    out = tokens_to_voxels(tokens, grid, mode="smooth")
    assert out.min() >= tokens.min() - 1e-6 and out.max() <= tokens.max() + 1e-6


@pytest.mark.parametrize("mode", ["patch", "smooth"])
def test_voxels_beyond_the_last_whole_patch_are_zero(mode):
    grid = grid_from_patches((11, 9, 8), (4, 4, 4))  # covers 8 x 8 x 8
    tokens = random_map(grid.shape, 3) + 0.5
    out = tokens_to_voxels(tokens, grid, mode=mode)
    assert out.shape == (2, 11, 9, 8)
    assert out[:, 8:].abs().max() == 0 and out[:, :, 8:].abs().max() == 0
    assert out[:, :8, :8, :8].min() > 0


@pytest.mark.parametrize("mode", ["patch", "smooth"])
def test_resized_output_lands_on_the_same_extent(mode):
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    tokens = torch.zeros((1, 4, 4, 4))
    tokens[0, 1, 2, 3] = 1.0  # covers input voxels [4,8) x [8,12) x [12,16)
    out = tokens_to_voxels(tokens, grid, out_shape=(32, 48, 8), mode=mode)[0]
    # the same extent in a volume 2x, 3x and 0.5x the model input
    idx = torch.nonzero(out == out.max()).float()
    centre = torch.tensor([6.0 * 2, 10.0 * 3, 14.0 * 0.5]) - 0.5
    lows = torch.tensor([8, 24, 6]).float()
    highs = torch.tensor([16, 36, 8]).float() - 1
    assert ((idx >= lows) & (idx <= highs)).all()
    if mode == "patch":
        assert int((out > 0).sum()) == 8 * 12 * 2
    else:
        assert torch.allclose(idx.mean(0)[:2], centre[:2], atol=0.51)


def test_cnn_grid_with_fractional_cells():
    grid = grid_over_input((3, 5, 2), (10, 11, 5))
    tokens = random_map(grid.shape, 4)
    out = tokens_to_voxels(tokens, grid, mode="patch")
    for i in range(10):
        torch.testing.assert_close(out[:, i, 0, 0], tokens[:, int((i + 0.5) * 3 / 10), 0, 0])
    smooth = tokens_to_voxels(tokens, grid, mode="smooth")
    expected = F.interpolate(tokens[:, None], size=(10, 11, 5), mode="trilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(smooth, expected)


def test_shape_mismatch_and_bad_mode():
    grid = grid_from_patches((8, 8, 8), (4, 4, 4))
    with pytest.raises(ValueError, match="does not match grid"):
        tokens_to_voxels(torch.zeros(1, 3, 2, 2), grid)
    with pytest.raises(ValueError, match="upsample must be one of smooth, patch"):
        tokens_to_voxels(torch.zeros(1, 2, 2, 2), grid, mode="cubic")


def test_dtype_and_device_kept():
    grid = TokenGrid((2, 2, 2), (2.0, 2.0, 2.0), (4, 4, 4))
    out = tokens_to_voxels(torch.ones(1, 2, 2, 2, dtype=torch.float64), grid)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    np.testing.assert_allclose(out.numpy(), 1.0)
