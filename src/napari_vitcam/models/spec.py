"""What a model expects as input and how to explain it: typed, JSON-friendly.

A :class:`ModelSpec` travels with every loaded model. It is stored as JSON in
native checkpoints (see ``docs/checkpoints.md``) and read from MONAI bundles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.core.vocabulary import Triple, class_label

NormKind = Literal["none", "zscore", "minmax", "window"]
NORM_KINDS = ("none", "zscore", "minmax", "window")
RESIZE_MODES = ("trilinear", "area", "nearest")


@dataclass(frozen=True)
class Normalization:
    """Intensity normalisation applied to the volume before the model sees it.

    * ``none``: values as they are.
    * ``zscore``: ``(v - mean) / std`` (over non-zero voxels if ``nonzero``).
    * ``minmax``: the volume's own min..max mapped to ``out_range``.
    * ``window``: ``window[0]..window[1]`` mapped to ``out_range``, clipped if ``clip``.
    """

    kind: NormKind = "none"
    window: tuple[float, float] | None = None
    out_range: tuple[float, float] = (0.0, 1.0)
    clip: bool = True
    nonzero: bool = False

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise CheckpointError(f"normalisation must be one of {', '.join(NORM_KINDS)}, got {self.kind!r}")
        if self.kind == "window":
            if self.window is None or len(self.window) != 2 or not self.window[0] < self.window[1]:
                raise CheckpointError(f"a window normalisation needs window [lo, hi] with lo < hi, got {self.window!r}")
            object.__setattr__(self, "window", (float(self.window[0]), float(self.window[1])))
        object.__setattr__(self, "out_range", (float(self.out_range[0]), float(self.out_range[1])))


@dataclass(frozen=True)
class InputSpec:
    """Channels and spatial size the model takes, and how a volume is brought there.

    ``normalize_first``: normalise, then resize (True), or the reverse.
    """

    channels: int = 1
    spatial_size: Triple = (64, 64, 64)
    normalization: Normalization = field(default_factory=Normalization)
    resize_mode: str = "trilinear"
    normalize_first: bool = True

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.spatial_size)
        if len(size) != 3 or min(size) <= 0:
            raise CheckpointError(f"spatial_size must be 3 positive ints, got {self.spatial_size!r}")
        object.__setattr__(self, "spatial_size", size)
        if self.resize_mode not in RESIZE_MODES:
            raise CheckpointError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if int(self.channels) <= 0:
            raise CheckpointError(f"channels must be positive, got {self.channels!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to explain a model besides its weights."""

    input: InputSpec = field(default_factory=InputSpec)
    class_names: tuple[str, ...] = ()
    target_layer: str | None = None
    score_layer: str | None = None
    architecture: str = ""
    arguments: dict = field(default_factory=dict, compare=False)

    def class_name(self, index: int) -> str:
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return class_label(index)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        try:
            raw_input = dict(data.get("input", {}))
            norm = Normalization(**raw_input.pop("normalization", {}))
            spec_input = InputSpec(normalization=norm, **raw_input)
            return cls(
                input=spec_input,
                class_names=tuple(str(c) for c in data.get("class_names", ())),
                target_layer=data.get("target_layer"),
                score_layer=data.get("score_layer"),
                architecture=str(data.get("architecture", "")),
                arguments=dict(data.get("arguments", {})),
            )
        except CheckpointError:
            raise
        except (TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(f"the model spec is malformed ({error}): see docs/checkpoints.md") from None

    def to_json(self) -> str:
        """The spec as JSON text; its ``arguments`` must be JSON values."""
        try:
            return json.dumps(self.to_dict(), sort_keys=True)
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"the spec's arguments must be JSON values ({error}): use numbers, strings, lists and dicts"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"the model spec is not valid JSON ({error.msg}): see docs/checkpoints.md") from None
        if not isinstance(data, dict):
            raise CheckpointError("the model spec is not a JSON object: see docs/checkpoints.md")
        return cls.from_dict(data)

    def with_(self, **changes) -> ModelSpec:
        return replace(self, **changes)
