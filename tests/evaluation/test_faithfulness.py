"""Deletion and insertion curves and the agreement check, on models whose answer is known."""

import numpy as np
import pytest
import torch

from napari_vitcam.core.errors import InputError
from napari_vitcam.engine.cam import grad_cam
from napari_vitcam.engine.token_grid import TokenGrid, grid_from_patches
from napari_vitcam.evaluation.faithfulness import (
    agreement,
    baseline_input,
    cell_index,
    compare_baselines,
    perturbation_curves,
)
from napari_vitcam.testing.models import OneRegionClassifier


def read_patch_map(model: OneRegionClassifier) -> torch.Tensor:
    """HiResCAM at the patch embedding: exactly the read patch's class-1 evidence, zero elsewhere."""
    x = model.bright_input()
    return grad_cam(model, x, "embed", 1, method="hirescam").token_cam[0]


def test_cell_index_places_voxels_in_their_cells_and_leaves_the_rest_out():
    grid = TokenGrid((2, 1, 3), (4.0, 5.0, 2.0), (9, 5, 7))
    cells = cell_index(grid, torch.device("cpu"))
    assert cells.shape == (9, 5, 7)
    assert int(cells[0, 0, 0]) == 0 and int(cells[3, 4, 5]) == 2 and int(cells[4, 0, 0]) == 3
    assert int(cells[7, 0, 0]) == 3 and (cells[8] == -1).all() and (cells[:, :, 6] == -1).all()
    assert sorted(torch.unique(cells).tolist()) == [-1, 0, 1, 2, 3, 4, 5]


def test_the_explained_region_falls_faster_than_random_orders(region_reader):
    token_map = read_patch_map(region_reader)
    assert int(token_map.argmax()) == (1 * 4 + 2) * 4 + 3  # the map itself points at the read patch
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    curves = perturbation_curves(region_reader, x, token_map, grid, 1, mode="deletion", baseline="mean", steps=16)
    assert curves.fractions[0] == 0.0 and curves.fractions[-1] == 1.0 and len(curves.fractions) == 17
    with torch.no_grad():
        full = float(region_reader(x).softmax(1)[0, 1])
        mean_only = float(region_reader(baseline_input(x, "mean", grid)).softmax(1)[0, 1])
    assert curves.ranked[0] == pytest.approx(full) and curves.ranked[-1] == pytest.approx(mean_only)
    # removing the read patch first takes the answer away at the first step
    assert curves.ranked[1] == pytest.approx(mean_only) and mean_only < full - 0.3
    assert curves.random.shape == (3, 17) and curves.beats_random
    assert curves.auc < curves.random_auc
    insertion = perturbation_curves(region_reader, x, token_map, grid, 1, mode="insertion", baseline="mean", steps=16)
    assert insertion.ranked[1] == pytest.approx(full, abs=1e-6) and insertion.beats_random
    assert curves.as_dict()["baseline"] == "mean" and curves.as_dict()["mode"] == "deletion"


def test_area_under_the_curve_is_the_trapezoid_rule(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    curves = perturbation_curves(region_reader, x, read_patch_map(region_reader), grid, 1, baseline="mean", steps=4)
    expected = sum((a + b) / 2 * 0.25 for a, b in zip(curves.ranked[:-1], curves.ranked[1:], strict=True))
    assert curves.auc == pytest.approx(expected)
    assert curves.random_aucs.shape == (3,)


def test_a_map_that_ignores_the_read_patch_does_not_beat_random(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    wrong = torch.zeros(grid.shape)
    wrong[0, 0, 0] = 1.0  # points at a patch the model never reads
    wrong[1, 2, 3] = -1.0  # and ranks the read patch last
    result = agreement(region_reader, x, wrong, grid, 1, share=0.1, baseline="mean")
    assert result.drop == pytest.approx(0.0, abs=1e-6) and not result.better_than_random
    assert "no better than random" in result.line
    right = agreement(region_reader, x, read_patch_map(region_reader), grid, 1, share=0.1, baseline="mean")
    assert right.better_than_random and right.drop > 0.4 and "do not trust" not in right.line
    assert right.cells == 6 and len(right.random_drops) == 7


def test_baselines_are_recorded_and_compared(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    token_map = read_patch_map(region_reader)
    healthy = region_reader.bright_input(level=0.0)
    curves = compare_baselines(
        region_reader,
        x,
        token_map,
        grid,
        1,
        baselines=("blur", "mean", "noise", "reference"),
        reference=healthy,
        steps=8,
    )
    assert sorted(curves) == ["blur", "mean", "noise", "reference"]
    assert all(c.baseline == name for name, c in curves.items())
    assert all(c.beats_random for c in curves.values())
    blurred = baseline_input(x, "blur", grid)
    assert blurred.shape == x.shape and float(blurred[0, 0][region_reader.region()].mean()) < float(
        x[0, 0][region_reader.region()].mean()
    )
    with pytest.raises(InputError, match="reference volume"):
        baseline_input(x, "reference", grid)
    with pytest.raises(InputError, match="unknown baseline"):
        baseline_input(x, "zeros", grid)


def test_the_model_is_left_as_it_was(region_reader):
    region_reader.train()
    before = {k: v.clone() for k, v in region_reader.state_dict().items()}
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    perturbation_curves(region_reader, x, np.ones(grid.shape), grid, 1, steps=2, random_orders=1)
    assert region_reader.training
    assert all(torch.equal(before[k], v) for k, v in region_reader.state_dict().items())


def test_bad_inputs_are_refused_in_one_line(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    with pytest.raises(InputError, match="token map has shape"):
        perturbation_curves(region_reader, x, torch.zeros(3, 3, 3), grid, 1)
    bad = torch.zeros(grid.shape)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        agreement(region_reader, x, bad, grid, 1)
    with pytest.raises(InputError, match="unknown mode"):
        perturbation_curves(region_reader, x, torch.zeros(grid.shape), grid, 1, mode="sideways")  # type: ignore[arg-type]
