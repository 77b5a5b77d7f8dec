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

from napari_vitcam.engine.targets import TargetCandidate, recommended_target

POOLED_HEAD_METHOD = "relevance"
"""What a pooled head gets: measured, Grad-CAM at the final norm points at the evidence only where a model was
trained to keep its evidence in its own tokens (this project's demo), not on vit-pytorch's SimpleViT."""


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


def recommend_method(candidates: list[TargetCandidate], has_attention: bool) -> MethodChoice:
    """The default explainer for a model, from its target candidates and whether its attention can be read.

    Args:
        candidates: what :func:`~napari_vitcam.engine.targets.list_targets` found for it.
        has_attention: whether :func:`~napari_vitcam.engine.attention.capture_attention`
            found one attention matrix per block during the same probe.
    """
    pooled = [c for c in candidates if c.kind == "final_norm" and not c.zero_gradient]
    if pooled and POOLED_HEAD_METHOD == "gradcam":
        return MethodChoice(
            "gradcam",
            pooled[-1].name,
            "the head pools the patch tokens: Grad-CAM at the final norm is each token's score",
        )
    if has_attention:
        return MethodChoice(
            "relevance",
            None,
            "a transformer: attention relevance points at the evidence where Grad-CAM often does not",
        )
    return MethodChoice(
        "gradcam", recommended_target(candidates), "no attention to read: Grad-CAM at the recommended layer"
    )
