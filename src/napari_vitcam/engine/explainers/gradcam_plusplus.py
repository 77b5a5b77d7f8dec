"""Grad-CAM++: Chattopadhay, Sarkar, Howlader & Balasubramanian 2018, "Grad-CAM++: Generalized
Gradient-Based Visual Explanations for Deep Convolutional Networks" (WACV; arXiv:1710.11063)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs

EPS = 1e-6


class GradCAMPlusPlus(LayerExplainer):
    """Channel weights from positive gradients, each token weighted by its own alpha (eq. 19).

    With ``g = dy/dA`` at token t, channel k::

        alpha_t^k = g^2 / (2 g^2 + (sum_t' A_t'^k) g^3 + eps)     (0 where g = 0)
        w_k       = sum_t alpha_t^k * ReLU(g_t^k)
        CAM_t     = ReLU(sum_k w_k A_t^k)

    the closed form for an exponential score, as pytorch-grad-cam computes it
    (eps = 1e-6), on the grid tokens.
    """

    name = "gradcampp"
    label = "Grad-CAM++"
    paper = "Chattopadhay et al. 2018, Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep CNNs"

    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        a, g = inputs.activations, inputs.gradients
        g2 = g * g
        total = a.sum(dim=1, keepdim=True)
        alpha = g2 / (2 * g2 + total * g2 * g + EPS)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (g.relu() * alpha).sum(dim=1)
        return torch.einsum("bne,be->bn", a, weights).relu_()
