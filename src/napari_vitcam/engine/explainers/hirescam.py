"""HiResCAM: Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations
of convolutional neural networks" (arXiv:2011.08891)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs


class HiResCAM(LayerExplainer):
    """``ReLU(sum_k dy/dA^k * A^k)`` per token: the gradient is not averaged over tokens."""

    name = "hirescam"
    label = "HiResCAM"
    paper = "Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM for faithful explanations of CNNs"

    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        return torch.einsum("bne,bne->bn", inputs.activations, inputs.gradients).relu_()
