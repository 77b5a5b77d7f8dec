"""Which explainer to use by default, chosen from what the model is, by measurement.

The choice follows the measurements in ``docs/evaluation.md`` (models of
several families trained on tasks whose evidence is known, not only the demo):

* a transformer whose attention the engine can read, whatever its head
  (cls token or pooled): gradient-weighted attention relevance (Chefer, Gur &
  Wolf 2021). There Grad-CAM at the usual blocks points at the evidence on
  few volumes, and Grad-CAM at a pooled head's final norm (each token's own
  score) only where the model was trained to keep its evidence in its own
  tokens, while relevance points at it on nearly all (MONAI's ViT,
  vit-pytorch's ViT and SimpleViT, this project's ViT3D);
* anything else (no attention the engine can read, a CNN): Grad-CAM at the
  recommended layer.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def recommend_method(candidates: list[TargetCandidate], has_attention: bool) -> MethodChoice:
    """The default explainer for a model, from its target candidates and whether its attention can be read.

    Args:
        candidates: what :func:`~napari_vitcam.engine.targets.list_targets` found for it.
        has_attention: whether :func:`~napari_vitcam.engine.attention.capture_attention`
            found one attention matrix per block during the same probe.
    """
    if has_attention:
        return MethodChoice(
            "relevance",
            None,
            "a transformer: attention relevance points at the evidence where Grad-CAM often does not "
            "(measured on five model families, docs/evaluation.md)",
        )
    return MethodChoice(
        "gradcam", recommended_target(candidates), "no attention to read: Grad-CAM at the recommended layer"
    )
