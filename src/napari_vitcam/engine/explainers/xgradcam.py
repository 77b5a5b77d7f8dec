"""XGrad-CAM: Fu, Hu, Dong, Guo, Gao & Zhang 2020, "Axiom-based Grad-CAM: Towards Accurate
Visualization and Explanation of CNNs" (BMVC; arXiv:2008.02312)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs

EPS = 1e-7


class XGradCAM(LayerExplainer):
    """Channel weights: gradients averaged with the channel's own normalised activations as weights.

    ::

        w_k   = sum_t (A_t^k / (sum_t' A_t'^k + eps)) * dy/dA_t^k
        CAM_t = ReLU(sum_k w_k A_t^k)

    as pytorch-grad-cam computes it (eps = 1e-7), on the grid tokens.
    """

    name = "xgradcam"
    label = "XGrad-CAM"
    paper = "Fu et al. 2020, Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs"

    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        a, g = inputs.activations, inputs.gradients
        weights = (g * a / (a.sum(dim=1, keepdim=True) + EPS)).sum(dim=1)
        return torch.einsum("bne,be->bn", a, weights).relu_()
