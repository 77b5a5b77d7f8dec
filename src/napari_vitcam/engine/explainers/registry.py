"""The explainers by name: the one place a new method is registered.

The widget's method list, the CLI's ``--method`` choices and the docs' table
are all read from :data:`EXPLAINERS`. To add a method, write one module with
one :class:`~napari_vitcam.engine.explainers.base.Explainer` subclass and add
it to :data:`_ALL` below (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from napari_vitcam.core.errors import InputError
from napari_vitcam.engine.explainers.base import Explainer
from napari_vitcam.engine.explainers.eigencam import EigenCAM
from napari_vitcam.engine.explainers.gradcam import GradCAM
from napari_vitcam.engine.explainers.gradcam_plusplus import GradCAMPlusPlus
from napari_vitcam.engine.explainers.hirescam import HiResCAM
from napari_vitcam.engine.explainers.layercam import LayerCAM
from napari_vitcam.engine.explainers.occlusion import Occlusion
from napari_vitcam.engine.explainers.relevance import AttentionRelevance
from napari_vitcam.engine.explainers.rollout import AttentionRollout
from napari_vitcam.engine.explainers.scorecam import ScoreCAM
from napari_vitcam.engine.explainers.xgradcam import XGradCAM

_ALL: tuple[Explainer, ...] = (
    GradCAM(),
    HiResCAM(),
    LayerCAM(),
    GradCAMPlusPlus(),
    XGradCAM(),
    EigenCAM(),
    ScoreCAM(),
    AttentionRelevance(),
    AttentionRollout(),
    Occlusion(),
)

EXPLAINERS: Mapping[str, Explainer] = MappingProxyType({e.name: e for e in _ALL})
"""Every explainer, by name, in the order the widget lists them (read-only)."""

DEFAULT_EXPLAINER = "gradcam"


def get_explainer(name: str) -> Explainer:
    """The explainer called ``name``; an unknown name is an :class:`InputError` listing the known ones."""
    try:
        return EXPLAINERS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown method {name!r}: choose one of {', '.join(EXPLAINERS)}") from None


def explainer_label(name: str) -> str:
    """The readable name of a method, or ``name`` itself for one that is not registered."""
    explainer = EXPLAINERS.get(name)
    return explainer.label if explainer is not None else name
