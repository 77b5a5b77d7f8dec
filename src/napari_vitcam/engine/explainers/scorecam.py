"""Score-CAM: Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu 2020, "Score-CAM: Score-Weighted
Visual Explanations for Convolutional Neural Networks" (CVPR Workshops; arXiv:1910.01279)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs
from napari_vitcam.engine.voxel_map import tokens_to_voxels

EPS = 1e-8


class ScoreCAM(LayerExplainer):
    """Channel weights from the class score of the input masked by each channel's map.

    For each channel k of the target layer, its token map is scaled to [0, 1],
    mapped to voxels (``"smooth"``, the trilinear interpolation of the token
    grid) and multiplied into the input; the model scores each masked input::

        M_k   = (A^k - min A^k) / (max A^k - min A^k + eps)
        w     = softmax_k( y^c(X * up(M_k)) )
        CAM_t = ReLU(sum_k w_k A_t^k)

    as pytorch-grad-cam does (the class logit, softmax over channels). One
    forward pass per channel, ``batch_size`` masked inputs at a time, on the
    model's device; no gradients.
    """

    name = "scorecam"
    label = "Score-CAM"
    paper = "Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for CNNs"
    needs_gradients = False
    needs_forward = True

    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        if inputs.x is None or inputs.scorers is None or inputs.grid is None:
            raise ValueError("Score-CAM needs the input, the scorers and the grid")
        grid = inputs.grid
        maps = []
        for b, scorer in enumerate(inputs.scorers):
            a = inputs.activations[b]  # (N, E)
            low, high = a.amin(dim=0), a.amax(dim=0)
            masks = ((a - low) / (high - low + EPS)).T.reshape(-1, *grid.shape)  # (E, d, h, w)
            scores = []
            for start in range(0, masks.shape[0], inputs.batch_size):
                chunk = tokens_to_voxels(masks[start : start + inputs.batch_size], grid, mode="smooth")
                masked = inputs.x[b : b + 1] * chunk[:, None].to(inputs.x.dtype)
                scores.append(scorer(masked).float())
            weights = torch.cat(scores).softmax(dim=0)
            maps.append((a @ weights.to(a.dtype)).relu_())
        return torch.stack(maps)
