"""Explanation methods: one module each, one registry (:mod:`.registry`), one interface (:mod:`.base`)."""

from napari_vitcam.engine.explainers.base import (
    AttentionExplainer,
    AttentionInputs,
    Explainer,
    LayerExplainer,
    LayerInputs,
    PerturbationExplainer,
    PerturbationInputs,
)
from napari_vitcam.engine.explainers.registry import DEFAULT_EXPLAINER, EXPLAINERS, explainer_label, get_explainer

__all__ = [
    "DEFAULT_EXPLAINER",
    "EXPLAINERS",
    "AttentionExplainer",
    "AttentionInputs",
    "Explainer",
    "LayerExplainer",
    "LayerInputs",
    "PerturbationExplainer",
    "PerturbationInputs",
    "explainer_label",
    "get_explainer",
]
