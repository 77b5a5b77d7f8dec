"""LayerCAM: Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization" (IEEE TIP)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs


class LayerCAM(LayerExplainer):
    """``ReLU(sum_k ReLU(dy/dA^k) * A^k)`` per token: only positive gradients count."""

    name = "layercam"
    label = "LayerCAM"
    paper = "Jiang et al. 2021, LayerCAM: Exploring Hierarchical Class Activation Maps for Localization"

    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        return torch.einsum("bne,bne->bn", inputs.activations, inputs.gradients.relu()).relu_()
