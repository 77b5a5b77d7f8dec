"""Deletion and insertion curves and the agreement check, on models whose answer is known."""

import threading

import numpy as np
import pytest
import torch

from napari_vitcam.core.errors import Cancelled, InputError
from napari_vitcam.engine.cam import grad_cam
from napari_vitcam.engine.token_grid import TokenGrid, grid_from_patches
from napari_vitcam.evaluation.faithfulness import (
    agreement,
    baseline_input,
    cell_index,
    compare_baselines,
    deletion_and_insertion,
    perturbation_curves,
    perturbed_inputs,
    ranked_order,
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


def count_inputs(model: torch.nn.Module) -> list[int]:
    """A list that grows by each batch's size whenever ``model`` runs (the hook stays for the test's model only)."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _module, args: sizes.append(int(args[0].shape[0])))
    return sizes


def test_deletion_and_insertion_run_each_shared_input_once(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    token_map = read_patch_map(region_reader)
    sizes = count_inputs(region_reader)
    both = deletion_and_insertion(region_reader, x, token_map, grid, 1, baseline="mean", steps=16, random_orders=3)
    # 15 inner points for each of the map's two curves and each of the 3 random orders
    # (the insertion band is the deletion band read backwards), the input itself and the baseline
    assert sum(sizes) == 15 * (2 + 3) + 2 == perturbed_inputs(grid.n_tokens, steps=16, random_orders=3)
    assert max(sizes) <= 8
    deletion, insertion = both["deletion"], both["insertion"]
    assert deletion.ranked[0] == insertion.ranked[-1] and deletion.ranked[-1] == insertion.ranked[0]
    np.testing.assert_array_equal(insertion.random, deletion.random[:, ::-1])
    np.testing.assert_array_equal(insertion.fractions, 1.0 - deletion.fractions[::-1])
    assert deletion.beats_random and insertion.beats_random
    # one mode alone gives the same curve as both together
    alone = perturbation_curves(region_reader, x, token_map, grid, 1, mode="insertion", baseline="mean", steps=16)
    np.testing.assert_array_equal(alone.ranked, insertion.ranked)
    np.testing.assert_array_equal(alone.random, insertion.random)


def test_compared_maps_share_the_band_and_add_their_own_curves(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    token_map = read_patch_map(region_reader)
    wrong = -token_map  # ranks the read patch last
    sizes = count_inputs(region_reader)
    both = deletion_and_insertion(
        region_reader, x, token_map, grid, 1, baseline="mean", compared={"same": token_map.clone(), "wrong": wrong}
    )
    assert sum(sizes) == 77 + 2 * 2 * 15 == perturbed_inputs(grid.n_tokens, maps=3)
    for curves in both.values():
        np.testing.assert_array_equal(curves.compared["same"], curves.ranked)
        assert curves.compared_aucs["same"] == pytest.approx(curves.auc)
    deletion, insertion = both["deletion"], both["insertion"]
    assert deletion.compared_aucs["wrong"] > deletion.random_aucs.max() > deletion.auc
    assert insertion.compared_aucs["wrong"] < insertion.random_aucs.min() < insertion.auc
    assert deletion.as_dict()["compared"]["wrong"]["auc"] == deletion.compared_aucs["wrong"]
    alone = deletion_and_insertion(region_reader, x, token_map, grid, 1, baseline="mean")
    np.testing.assert_array_equal(alone["deletion"].random, deletion.random)  # the band does not depend on the maps
    with pytest.raises(InputError, match="token map has shape"):
        deletion_and_insertion(region_reader, x, token_map, grid, 1, compared={"bad": torch.zeros(2, 2, 2)})


def test_the_curves_report_progress_and_stop_when_cancelled(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    token_map = read_patch_map(region_reader)
    heard: list[tuple[int, int]] = []
    deletion_and_insertion(region_reader, x, token_map, grid, 1, batch_size=8, progress=lambda *a: heard.append(a))
    assert (
        heard[0] == (0, 77) and heard[-1] == (77, 77) and len(heard) == 10 + 1
    )  # before each of 10 batches, at the end
    assert [done for done, _ in heard] == sorted(done for done, _ in heard)
    stop = threading.Event()

    def cancel_after_two(done: int, total: int) -> None:
        if done >= 16:
            stop.set()

    sizes = count_inputs(region_reader)
    with pytest.raises(Cancelled):
        deletion_and_insertion(region_reader, x, token_map, grid, 1, cancel=stop, progress=cancel_after_two)
    assert sum(sizes) == 16  # two batches ran, none after the cancel
    sizes.clear()
    with pytest.raises(Cancelled):
        agreement(region_reader, x, token_map, grid, 1, cancel=stop)
    assert sizes == []


def test_cells_of_equal_value_are_ranked_in_random_order():
    values = torch.zeros(4, 4, 4)
    values[1, 2, 3], values[0, 0, 1] = 2.0, 1.0
    orders = [ranked_order(values, torch.Generator().manual_seed(seed)) for seed in range(3)]
    for order in orders:
        assert order[:2].tolist() == [27, 1] and sorted(order.tolist()) == list(range(64))
    rest = [tuple(order[2:].tolist()) for order in orders]
    assert len(set(rest)) == 3 and rest[0] != tuple(i for i in range(64) if i not in (1, 27))


@pytest.mark.parametrize("band_mode", ["deletion", "insertion"])
def test_a_band_computed_for_one_map_serves_another(region_reader, band_mode):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    first = deletion_and_insertion(region_reader, x, read_patch_map(region_reader), grid, 1, baseline="noise", seed=5)
    other = torch.rand(grid.shape, generator=torch.Generator().manual_seed(1))  # another map of the same input
    alone = deletion_and_insertion(region_reader, x, other, grid, 1, baseline="noise", seed=5)
    sizes = count_inputs(region_reader)
    reused = deletion_and_insertion(region_reader, x, other, grid, 1, baseline="noise", seed=5, band=first[band_mode])
    assert sum(sizes) == 2 * 15  # only the map's own two curves run
    for mode in ("deletion", "insertion"):
        np.testing.assert_allclose(reused[mode].ranked, alone[mode].ranked, atol=1e-6)
        np.testing.assert_allclose(reused[mode].random, alone[mode].random, atol=1e-6)
    for wrong in ({"baseline": "mean"}, {"seed": 6}, {"steps": 8}, {"random_orders": 2}):
        options = {"baseline": "noise", "seed": 5, **wrong}
        with pytest.raises(InputError, match="band to reuse"):
            deletion_and_insertion(region_reader, x, other, grid, 1, band=first["deletion"], **options)
    with pytest.raises(InputError, match="band to reuse"):
        deletion_and_insertion(region_reader, x, other, grid, 0, baseline="noise", seed=5, band=first["deletion"])


def test_a_model_ending_in_softmax_is_read_as_its_own_probabilities(region_reader):
    model = torch.nn.Sequential(region_reader, torch.nn.Softmax(dim=1))
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    curves = deletion_and_insertion(model, x, read_patch_map(region_reader), grid, 1, baseline="mean")
    with torch.no_grad():
        own = float(model(x)[0, 1])
    assert curves["deletion"].ranked[0] == pytest.approx(own, abs=1e-6)  # not the softmax of the softmax
    assert curves["deletion"].ranked[0] > 0.9 and curves["deletion"].beats_random
    assert agreement(model, x, read_patch_map(region_reader), grid, 1, baseline="mean").probability == pytest.approx(
        own
    )


def test_an_odd_number_of_cells_keeps_the_points_mirrored():
    model = OneRegionClassifier(size=12, patch=4, token=(1, 1, 1))
    grid = grid_from_patches((12, 12, 12), (4, 4, 4))
    x = model.bright_input()
    token_map = torch.rand(grid.shape, generator=torch.Generator().manual_seed(0))
    both = deletion_and_insertion(model, x, token_map, grid, 1, baseline="mean", steps=2, random_orders=2)
    fractions = both["deletion"].fractions
    np.testing.assert_allclose(fractions, 1.0 - fractions[::-1])
    assert fractions.tolist() == [0.0, 13 / 27, 14 / 27, 1.0]  # 27 cells cannot be halved: both halves are points
    np.testing.assert_array_equal(both["insertion"].random, both["deletion"].random[:, ::-1])


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


def test_the_blur_baseline_is_a_gaussian_with_mirrored_edges():
    from scipy.ndimage import gaussian_filter

    x = torch.randn(1, 2, 30, 20, 24, generator=torch.Generator().manual_seed(0))
    grid = TokenGrid((5, 4, 6), (6.0, 5.0, 4.0), (30, 20, 24))  # cells of 6, 5 and 4 voxels: sigma = one cell
    blurred = baseline_input(x, "blur", grid)
    for channel in range(2):  # scipy's "mirror" is torch's "reflect"; both cut at 3 sigma (18, 15 and 12 voxels)
        expected = gaussian_filter(x[0, channel].double().numpy(), sigma=(6.0, 5.0, 4.0), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(blurred[0, channel].numpy(), expected, atol=1e-5)


def test_a_known_probability_saves_one_input_and_changes_nothing(region_reader):
    x = region_reader.bright_input()
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    token_map = read_patch_map(region_reader)
    with torch.no_grad():
        known = float(region_reader(x).softmax(1)[0, 1])
    sizes = count_inputs(region_reader)
    measured = agreement(region_reader, x, token_map, grid, 1, baseline="mean")
    assert sum(sizes) == 7 + 2
    sizes.clear()
    given = agreement(region_reader, x, token_map, grid, 1, baseline="mean", probability=known)
    assert sum(sizes) == 7 + 1 and given.probability == known
    assert given.drop == pytest.approx(measured.drop, abs=1e-6)
    np.testing.assert_allclose(given.random_drops, measured.random_drops, atol=1e-6)


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


class OneLogit(torch.nn.Module):
    """The one-region model as a binary classifier with one output, a logit (optionally ending in a sigmoid)."""

    def __init__(self, reader: OneRegionClassifier, sigmoid: bool = False):
        super().__init__()
        self.reader = reader
        self.out = torch.nn.Sigmoid() if sigmoid else torch.nn.Identity()

    def forward(self, x):
        scores = self.reader(x)
        return self.out(scores[:, 1:2] - scores[:, 0:1])


@pytest.mark.parametrize("sigmoid", [False, True])
def test_a_model_with_one_output_is_read_as_a_logit_or_as_its_sigmoid(region_reader, sigmoid):
    model = OneLogit(region_reader, sigmoid)
    x = region_reader.bright_input(level=0.3)  # not saturated: p about 0.92
    grid = grid_from_patches((16, 16, 16), (4, 4, 4))
    token_map = read_patch_map(region_reader)
    with torch.no_grad():
        output = float(model(x)[0, 0])
    expected = output if sigmoid else float(torch.sigmoid(torch.tensor(output)))
    assert 0.9 < expected < 1.0  # a probability, not softmax's constant 1 of a single output
    explained = grad_cam(model, x, "reader.embed", 0, method="hirescam")
    assert float(explained.probabilities[0, 0]) == pytest.approx(expected, abs=1e-6)
    curves = deletion_and_insertion(model, x, token_map, grid, 0, baseline="mean")
    assert curves["deletion"].ranked[0] == pytest.approx(expected, abs=1e-6)
    assert curves["deletion"].ranked[1] < expected - 0.2 and curves["deletion"].beats_random
    check = agreement(model, x, token_map, grid, 0, baseline="mean", probability=expected)
    assert check.better_than_random  # with softmax the drop was always 0: "do not trust it" on every map
