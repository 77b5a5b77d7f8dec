"""Which explainer to use by default, chosen from what the model is, by measurement.

The choice follows the measurements in ``docs/evaluation.md`` (models of
several families trained on tasks whose evidence is known, not only the demo):

* a transformer whose head reads a cls token: attention rollout (Abnar &
  Zuidema 2020). On the third-party families it points at the evidence as
  often as relevance (1.00) and its top cells matter more to the model; on
  every cls-token demo model trained here it points more often (0.67-0.93
  against 0.35-0.83). It is one map for every class: choose relevance to ask
  about one class;
* a transformer that pools its patch tokens: gradient-weighted attention
  relevance (Chefer, Gur & Wolf 2021). Grad-CAM at a pooled head's final norm
  (each token's own score) points at the evidence only where the model was
  trained to keep its evidence in its own tokens (this project's demo);
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


def recommend_method(candidates: list[TargetCandidate], has_attention: bool, prefix_tokens: int = 0) -> MethodChoice:
    """The default explainer for a model, from its target candidates and what its attention looks like.

    Args:
        candidates: what :func:`~napari_vitcam.engine.targets.list_targets` found for it.
        has_attention: whether :func:`~napari_vitcam.engine.attention.capture_attention`
            found one attention matrix per block during the same probe.
        prefix_tokens: how many tokens come before the patch tokens (a cls token: 1).
    """
    if has_attention and prefix_tokens > 0:
        return MethodChoice(
            "rollout",
            None,
            "a cls-token transformer: attention rollout points at the evidence most often, and its cells matter "
            "most to the model (measured, docs/evaluation.md); it is one map for every class",
        )
    if has_attention:
        return MethodChoice(
            "relevance",
            None,
            "a transformer that pools its tokens: attention relevance points at the evidence where Grad-CAM "
            "does not (measured, docs/evaluation.md)",
        )
    return MethodChoice(
        "gradcam", recommended_target(candidates), "no attention to read: Grad-CAM at the recommended layer"
    )
