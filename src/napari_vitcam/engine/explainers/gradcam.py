"""Grad-CAM: Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization" (ICCV)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs


class GradCAM(LayerExplainer):
    """``ReLU(sum_k alpha_k A^k)`` with ``alpha_k`` the token-mean gradient of channel k."""

    name = "gradcam"
    label = "Grad-CAM"
    paper = "Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization"

    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        alpha = inputs.gradients.mean(dim=1)
        return torch.einsum("bne,be->bn", inputs.activations, alpha).relu_()
