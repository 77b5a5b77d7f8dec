"""Row 5 (the cost of deletion and insertion) runs and counts what it says, on a tiny ViT. Not timed."""

import torch

from benchmarks import evaluation_cost
from benchmarks import run as bench

TINY = {"img_size": 16, "patch_size": 8, "width": 16, "depth": 2, "heads": 2, "num_classes": 2}


def test_the_row_counts_every_perturbed_input():
    row = evaluation_cost.evaluation_cost_row(bench.ModelSource("tiny", TINY), 1, torch.device("cpu"), steps=4)
    assert row.row == "5" and row.met in (True, False)
    assert "8 patches" in row.case and "batch 8" in row.case
    # 3 inner points for each of the map's 2 curves and each of 3 random orders, the input and the baseline
    assert row.details.startswith(f"{3 * (2 + 3) + 2} perturbed inputs")
    assert float(row.result.split()[0]) > 0
