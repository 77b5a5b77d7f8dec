"""Occlusion: Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"
(ECCV; arXiv:1311.2901), one occluder per patch of the token grid."""

from __future__ import annotations

import math

import torch

from napari_vitcam.engine.explainers.base import PerturbationExplainer, PerturbationInputs


def cell_bounds(index: int, cell: float) -> tuple[int, int]:
    """The input voxels ``[start, stop)`` of grid cell ``index`` along an axis of ``cell`` voxels per cell."""
    return math.floor(index * cell + 1e-9), math.floor((index + 1) * cell + 1e-9)


class Occlusion(PerturbationExplainer):
    """How much the class score drops when one patch of the input is replaced by a baseline.

    For each grid cell t (the voxels of one token's patch)::

        occlusion_t = ReLU( y^c(X) - y^c(X with patch t set to the baseline) )

    with the baseline ``baseline`` (default 0, the mean of a z-scored volume).
    One forward pass per cell, ``batch_size`` occluded copies at a time, on the
    model's device: slow, but it asks the model itself, so it is the reference
    the other maps are checked against.
    """

    name = "occlusion"
    label = "Occlusion (slow)"
    paper = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks"

    def __init__(self, baseline: float = 0.0):
        self.baseline = baseline

    def token_map(self, inputs: PerturbationInputs) -> torch.Tensor:
        x, grid = inputs.x, inputs.grid
        base = inputs.score(x).float()
        cells = [(i, j, k) for i in range(grid.shape[0]) for j in range(grid.shape[1]) for k in range(grid.shape[2])]
        drops = []
        for start in range(0, len(cells), inputs.batch_size):
            chunk = cells[start : start + inputs.batch_size]
            batch = x.expand(len(chunk), *x.shape[1:]).clone()
            for n, cell in enumerate(chunk):
                (d0, d1), (h0, h1), (w0, w1) = (cell_bounds(c, s) for c, s in zip(cell, grid.cell, strict=False))
                batch[n, :, d0:d1, h0:h1, w0:w1] = self.baseline
            drops.append(base - inputs.score(batch).float())
        return torch.cat(drops)[None].relu_()
