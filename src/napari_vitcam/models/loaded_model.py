"""A model ready to explain: the module, its spec and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from napari_vitcam.engine.recommend import MethodChoice
from napari_vitcam.engine.targets import TargetCandidate
from napari_vitcam.models.spec import ModelSpec


@dataclass
class LoadedModel:
    """What :func:`~napari_vitcam.load_checkpoint` returns.

    ``sha256`` maps every file read to its digest, so an explanation can be
    traced to the exact weights. ``warnings`` lists what loading tolerated
    (ignored keys, for example). ``format`` says what was read: ``native``,
    ``state-dict`` (with a factory or a spec's architecture), ``pickled-module``
    (trusted) or ``monai-bundle``. ``targets``: the target candidates, when
    loading probed them to choose the target layer (None when it did not), so
    a front end need not run the model again to list them. ``method``: the
    default explainer (:func:`~napari_vitcam.models.targets.method_for`), once chosen.
    """

    model: nn.Module
    spec: ModelSpec
    source: Path | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    format: str = ""
    targets: tuple[TargetCandidate, ...] | None = None
    method: MethodChoice | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names
