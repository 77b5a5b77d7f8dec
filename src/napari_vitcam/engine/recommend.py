"""Which explainer to use by default, chosen from what the model is, by measurement.

The choice follows the measurements in ``docs/evaluation.md`` (models of
several families trained on tasks whose evidence is known, not only the demo):

* a transformer whose head pools its patch tokens (a final norm with a
  gradient): Grad-CAM at that norm, where it is each token's own class score;
* a transformer whose head reads a cls token: gradient-weighted attention
  relevance (Chefer, Gur & Wolf 2021). There Grad-CAM at the usual blocks
  points at the evidence on few volumes, while relevance does on nearly all
  (MONAI's ViT, vit-pytorch's ViT and this project's ViT3D alike);
* anything else (no attention the engine can read, a CNN): Grad-CAM at the
  recommended layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_vitcam.core.errors import TargetLayerError
from napari_vitcam.engine.attention import capture_attention, check_attention
from napari_vitcam.engine.capture import eval_mode, model_lock
from napari_vitcam.engine.targets import TargetCandidate, recommended_target


@dataclass(frozen=True)
class MethodChoice:
    """The default explainer for a model.

    Args:
        method: the explainer's registry name.
        target_layer: the layer it reads (None for methods that read none).
        reason: one line for a person: why this method.
    """

    method: str
    target_layer: str | None
    reason: str


def recommend_method(model: nn.Module, example: torch.Tensor, candidates: list[TargetCandidate]) -> MethodChoice:
    """The default explainer for ``model``, from its target candidates and one forward pass on ``example``.

    Args:
        model: the classifier.
        example: an input of the shape it takes (batch 1).
        candidates: what :func:`~napari_vitcam.engine.targets.list_targets` found for it.
    """
    pooled = [c for c in candidates if c.kind == "final_norm" and not c.zero_gradient]
    if pooled:
        return MethodChoice(
            "gradcam",
            pooled[-1].name,
            "the head pools the patch tokens: Grad-CAM at the final norm is each token's score",
        )
    try:
        with model_lock(model), eval_mode(model), torch.no_grad(), capture_attention(model, example.shape[0]) as found:
            model(example)
        check_attention(found)
    except TargetLayerError:
        found = []
    if found:
        return MethodChoice(
            "relevance",
            None,
            "the head reads a cls token: attention relevance points at the evidence where Grad-CAM often does not",
        )
    return MethodChoice(
        "gradcam", recommended_target(candidates), "no attention to read: Grad-CAM at the recommended layer"
    )
