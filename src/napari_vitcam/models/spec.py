"""What a model expects as input and how to explain it: typed, JSON-friendly, checked.

A :class:`ModelSpec` travels with every loaded model. It is stored as JSON in
native checkpoints (see ``docs/checkpoints.md``) and read from MONAI bundles.
Every field's type and range is checked when a spec is made, whether in code,
from a file or before saving: a wrong spec is refused with one line naming the
field, never read as something else (``"false"`` is not a boolean, ``"1"`` is
not a channel count, ``Infinity`` is not a window bound). Size bounds are in
:mod:`napari_vitcam.models.limits`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral, Real
from typing import Literal

from napari_vitcam.core.errors import CheckpointError
from napari_vitcam.core.vocabulary import Triple, class_label
from napari_vitcam.engine.explainers import EXPLAINERS
from napari_vitcam.models import limits

NormKind = Literal["none", "zscore", "minmax", "window"]
NORM_KINDS = ("none", "zscore", "minmax", "window")
RESIZE_MODES = ("trilinear", "area", "nearest")
FIT_MODES = ("resize", "crop_or_pad")
#: Orientation letters (nibabel's and MONAI's axis codes) and the RAS axis each runs along.
_AXIS_OF_CODE = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
FIX = "fix the spec (see docs/checkpoints.md)"

#: The fields each JSON object of a spec may hold.
SPEC_FIELDS = ("input", "class_names", "target_layer", "score_layer", "architecture", "arguments", "method")
INPUT_FIELDS = (
    "channels",
    "spatial_size",
    "normalization",
    "resize_mode",
    "normalize_first",
    "orientation",
    "spacing",
    "fit",
)
NORMALIZATION_FIELDS = ("kind", "window", "out_range", "clip", "nonzero")


def _wrong(name: str, wanted: str, value: object) -> CheckpointError:
    return CheckpointError(f"the spec's {name} must be {wanted}, got {value!r}: {FIX}")


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _wrong(name, "true or false (a boolean, not a string)", value)
    return value


def _finite_pair(name: str, value: object) -> tuple[float, float]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise _wrong(name, "two finite numbers [low, high]", value)
    return (float(value[0]), float(value[1]))


def orientation_codes(value: object) -> str | None:
    """``value`` as three upper-case axis codes (one of R/L, A/P and S/I), or None when it is not that."""
    if not isinstance(value, str) or len(value) != 3:
        return None
    codes = value.upper()
    if any(c not in _AXIS_OF_CODE for c in codes) or {_AXIS_OF_CODE[c] for c in codes} != {0, 1, 2}:
        return None
    return codes


@dataclass(frozen=True)
class Normalization:
    """Intensity normalisation applied to the volume before the model sees it.

    * ``none``: values as they are.
    * ``zscore``: ``(v - mean) / std`` (over non-zero voxels if ``nonzero``).
    * ``minmax``: the volume's own min..max mapped to ``out_range``.
    * ``window``: ``window[0]..window[1]`` mapped to ``out_range``, clipped if ``clip``.

    ``window`` and ``out_range`` are finite numbers (``low < high`` for the
    window, ``low != high`` for the range); ``clip`` and ``nonzero`` are booleans.
    """

    kind: NormKind = "none"
    window: tuple[float, float] | None = None
    out_range: tuple[float, float] = (0.0, 1.0)
    clip: bool = True
    nonzero: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in NORM_KINDS:
            raise CheckpointError(f"normalisation must be one of {', '.join(NORM_KINDS)}, got {self.kind!r}: {FIX}")
        if self.kind == "window" and self.window is None:
            raise CheckpointError(
                f"a window normalisation needs window [lo, hi] with lo < hi, got {self.window!r}: {FIX}"
            )
        if self.window is not None:
            window = _finite_pair("normalization.window", self.window)
            if not window[0] < window[1]:
                raise CheckpointError(
                    f"a window normalisation needs window [lo, hi] with lo < hi, got {self.window!r}: {FIX}"
                )
            object.__setattr__(self, "window", window)
        out_range = _finite_pair("normalization.out_range", self.out_range)
        if out_range[0] == out_range[1]:
            raise _wrong("normalization.out_range", "two different numbers", self.out_range)
        object.__setattr__(self, "out_range", out_range)
        _bool("normalization.clip", self.clip)
        _bool("normalization.nonzero", self.nonzero)


@dataclass(frozen=True)
class InputSpec:
    """Channels and spatial size the model takes, and how a volume is brought there.

    ``channels``: 1 to :data:`~napari_vitcam.models.limits.MAX_CHANNELS`.
    ``spatial_size``: (depth, height, width), each 1 to
    :data:`~napari_vitcam.models.limits.MAX_SIDE`, at most
    :data:`~napari_vitcam.models.limits.MAX_VOXELS` in all.
    ``normalize_first``: normalise, then resize (True), or the reverse.
    ``orientation``: the orientation the training volumes had (three axis
    codes, one of R/L, A/P and S/I, e.g. ``"RAS"``), or None (the volume's axes
    as given). ``spacing``: the voxel size (mm) along the model's three axes
    the training volumes were resampled to, each above 0 and at most
    :data:`~napari_vitcam.models.limits.MAX_SPACING_MM`, or None (the volume's own).
    ``fit``: how the (reoriented, resampled) volume is brought to
    ``spatial_size``: ``"resize"`` (scaled to it; a declared spacing then
    changes nothing) or ``"crop_or_pad"`` (centre-cropped or zero-padded, as
    MONAI's ``ResizeWithPadOrCrop``; ``resize_mode`` ``trilinear`` or ``nearest``).
    See :mod:`napari_vitcam.pipeline.frame`.
    """

    channels: int = 1
    spatial_size: Triple = (64, 64, 64)
    normalization: Normalization = field(default_factory=Normalization)
    resize_mode: str = "trilinear"
    normalize_first: bool = True
    orientation: str | None = None
    spacing: tuple[float, float, float] | None = None
    fit: str = "resize"

    def __post_init__(self) -> None:
        size = self.spatial_size
        if not isinstance(size, (tuple, list)) or len(size) != 3 or not all(_is_int(s) and s > 0 for s in size):
            raise CheckpointError(f"spatial_size must be 3 positive ints, got {self.spatial_size!r}: {FIX}")
        triple = (int(size[0]), int(size[1]), int(size[2]))
        if max(triple) > limits.MAX_SIDE or math.prod(triple) > limits.MAX_VOXELS:
            raise CheckpointError(
                f"spatial_size {triple} is over the bounds ({limits.MAX_SIDE} voxels along an axis, "
                f"{limits.MAX_VOXELS:,} in all): {FIX}"
            )
        object.__setattr__(self, "spatial_size", triple)
        if not isinstance(self.resize_mode, str) or self.resize_mode not in RESIZE_MODES:
            raise CheckpointError(
                f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}: {FIX}"
            )
        if not _is_int(self.channels):
            raise _wrong("input.channels", "a whole number (not a string)", self.channels)
        if self.channels <= 0:
            raise CheckpointError(f"channels must be positive, got {self.channels!r}: {FIX}")
        if self.channels > limits.MAX_CHANNELS:
            raise _wrong("input.channels", f"at most {limits.MAX_CHANNELS}", self.channels)
        object.__setattr__(self, "channels", int(self.channels))
        if not isinstance(self.normalization, Normalization):
            raise _wrong("input.normalization", "a Normalization", self.normalization)
        _bool("input.normalize_first", self.normalize_first)
        self._check_frame()

    def _check_frame(self) -> None:
        if self.orientation is not None:
            codes = orientation_codes(self.orientation)
            if codes is None:
                raise _wrong(
                    "input.orientation",
                    'three axis codes, one of R/L, A/P and S/I (e.g. "RAS") or null',
                    self.orientation,
                )
            object.__setattr__(self, "orientation", codes)
        spacing = self.spacing
        if spacing is not None:
            if (
                not isinstance(spacing, (tuple, list))
                or len(spacing) != 3
                or not all(
                    isinstance(v, Real)
                    and not isinstance(v, bool)
                    and math.isfinite(v)
                    and 0 < v <= limits.MAX_SPACING_MM
                    for v in spacing
                )
            ):
                raise _wrong(
                    "input.spacing",
                    f"three voxel sizes in mm, each above 0 and at most {limits.MAX_SPACING_MM:g}, or null",
                    spacing,
                )
            object.__setattr__(self, "spacing", (float(spacing[0]), float(spacing[1]), float(spacing[2])))
        if not isinstance(self.fit, str) or self.fit not in FIT_MODES:
            raise _wrong("input.fit", f"one of {', '.join(FIT_MODES)}", self.fit)
        if self.fit == "crop_or_pad" and self.resize_mode == "area":
            raise CheckpointError(
                f"resize_mode area averages for a resize only: with fit crop_or_pad use trilinear or nearest: {FIX}"
            )


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to explain a model besides its weights.

    ``class_names``: one string per output of the head (checked against the
    model when loading and saving); empty means ``class 0``, ``class 1``, ...
    ``target_layer`` and ``score_layer``: dotted module names, or None.
    ``architecture`` and ``arguments``: see
    :mod:`napari_vitcam.models.architectures.registry`. ``method``: the
    explainer the checkpoint was validated with (a registered name), which then
    replaces the default chosen for its kind of model; None: that default.
    """

    input: InputSpec = field(default_factory=InputSpec)
    class_names: tuple[str, ...] = ()
    target_layer: str | None = None
    score_layer: str | None = None
    architecture: str = ""
    arguments: dict = field(default_factory=dict, compare=False)
    method: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.input, InputSpec):
            raise _wrong("input", "an InputSpec", self.input)
        names = self.class_names
        if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
            raise _wrong("class_names", "a list of strings", names)
        if len(names) > limits.MAX_CLASSES:
            raise _wrong("class_names", f"at most {limits.MAX_CLASSES} names", f"{len(names)} names")
        object.__setattr__(self, "class_names", tuple(names))
        for name in ("target_layer", "score_layer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise _wrong(name, "a module name (a non-empty string) or null", value)
        if not isinstance(self.architecture, str):
            raise _wrong("architecture", "a string", self.architecture)
        if self.method is not None and self.method not in EXPLAINERS:
            raise _wrong("method", f"null or one of {', '.join(EXPLAINERS)}", self.method)
        if not isinstance(self.arguments, dict) or not all(isinstance(k, str) for k in self.arguments):
            raise _wrong("arguments", "an object of named values", self.arguments)

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
        """A spec from its JSON object; unknown fields and values of the wrong type are refused.

        Args:
            data: the decoded JSON object (see ``docs/checkpoints.md``).
        """
        _check_fields(data, SPEC_FIELDS, "")
        raw_input = data.get("input", {})
        _check_fields(raw_input, INPUT_FIELDS, "input.")
        raw_norm = raw_input.get("normalization", {})
        _check_fields(raw_norm, NORMALIZATION_FIELDS, "input.normalization.")
        if "input" in data and "spatial_size" not in raw_input:
            raise CheckpointError(f"the spec's input has no spatial_size: {FIX}")
        norm = Normalization(**raw_norm)
        input_fields = {k: v for k, v in raw_input.items() if k != "normalization"}
        spec_input = InputSpec(normalization=norm, **input_fields)
        class_names = data.get("class_names", [])
        if not isinstance(class_names, list):
            raise _wrong("class_names", "a list of strings", class_names)
        return cls(
            input=spec_input,
            class_names=tuple(class_names),
            target_layer=data.get("target_layer"),
            score_layer=data.get("score_layer"),
            architecture=data.get("architecture", ""),
            arguments=data.get("arguments", {}),
            method=data.get("method"),
        )

    def to_json(self) -> str:
        """The spec as JSON text; its ``arguments`` must be JSON values (finite numbers)."""
        try:
            return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"the spec's arguments must be JSON values ({error}): use finite numbers, strings, lists and dicts"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(spec_object(text))

    def with_(self, **changes) -> ModelSpec:
        return replace(self, **changes)


def _check_fields(data: object, allowed: tuple[str, ...], prefix: str) -> None:
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "model spec"
        raise CheckpointError(f"the spec's {where} must be a JSON object, got {data!r}: {FIX}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise CheckpointError(
            f"the spec has an unknown field {prefix}{unknown[0]} (known: {', '.join(allowed)}): {FIX}"
        )


def spec_object(text: str) -> dict:
    """The JSON object of a spec's text, refused with one line when it is not valid JSON or not an object."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        raise CheckpointError(f"the model spec is not valid JSON ({reason}): see docs/checkpoints.md") from None
    if not isinstance(data, dict):
        raise CheckpointError("the model spec is not a JSON object: see docs/checkpoints.md")
    return data
