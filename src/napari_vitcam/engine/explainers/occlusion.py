"""Occlusion: Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"
(ECCV; arXiv:1311.2901), one occluder per patch of the token grid."""

from __future__ import annotations

import math

import torch

from napari_vitcam.engine.explainers.base import PerturbationExplainer, PerturbationInputs

ROUNDING = 1e-5
"""Drops within this fraction of the batch's largest score are rounding, not evidence: they count as 0."""


def cell_bounds(index: int, cell: float) -> tuple[int, int]:
    """The input voxels ``[start, stop)`` of grid cell ``index`` along an axis of ``cell`` voxels per cell."""
    return math.floor(index * cell + 1e-9), math.floor((index + 1) * cell + 1e-9)


class Occlusion(PerturbationExplainer):
    """How much the class score drops when one patch of the input is replaced by a baseline.

    For each grid cell t (the voxels of one token's patch)::

        occlusion_t = ReLU( y^c(X) - y^c(X with patch t set to the baseline) )

    with the baseline ``baseline`` (default 0, the mean of a z-scored volume).
    One forward pass per cell, ``batch_size`` inputs at a time (the unoccluded
    input and ``batch_size - 1`` occluded copies, so that every drop compares
    scores of one batch: a cell the model ignores gets exactly 0, where scores
    from batches of different sizes differ by rounding, and drops within
    :data:`ROUNDING` of the scores count as 0), on the model's device:
    slow, but it asks the model itself, so it is the reference the other maps
    are checked against.
    """

    name = "occlusion"
    label = "Occlusion (slow)"
    paper = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks"

    def __init__(self, baseline: float = 0.0):
        self.baseline = baseline

    def token_map(self, inputs: PerturbationInputs) -> torch.Tensor:
        x, grid = inputs.x, inputs.grid
        cells = [(i, j, k) for i in range(grid.shape[0]) for j in range(grid.shape[1]) for k in range(grid.shape[2])]
        per_batch = max(inputs.batch_size - 1, 1)
        drops = []
        for start in range(0, len(cells), per_batch):
            chunk = cells[start : start + per_batch]
            # Row 0 is the input itself: each drop is measured against a score from the same batch, so a
            # patch the model ignores gives exactly 0, not the rounding difference between batch sizes.
            batch = x.expand(len(chunk) + 1, *x.shape[1:]).clone()
            for n, cell in enumerate(chunk, start=1):
                (d0, d1), (h0, h1), (w0, w1) = (cell_bounds(c, s) for c, s in zip(cell, grid.cell, strict=False))
                batch[n, :, d0:d1, h0:h1, w0:w1] = self.baseline
            scores = inputs.score(batch).float()
            drop = scores[0] - scores[1:]
            # Identical rows can still differ in the last bits by their place in the batch: that is no evidence.
            drops.append(drop.masked_fill(drop.abs() <= ROUNDING * scores.abs().max(), 0.0))
        return torch.cat(drops)[None].relu_()
