"""Checks that run before the model does: arguments, and numbers the model cannot use.

Each failure is one line that names the cause and the remedy, raised before
any forward pass where the cause is knowable up front. Non-finite numbers
(NaN, ±Inf, or float64 values beyond float32's range) would otherwise give a
silently wrong answer: class 0, NaN probabilities and an empty heatmap.
"""

from __future__ import annotations

import numbers
from typing import Literal, get_args

import numpy as np
import torch

from napari_vitcam.core.errors import InputError, ModelOutputError, NonFiniteInputError
from napari_vitcam.core.vocabulary import UPSAMPLE_MODES, Upsample

NonFinite = Literal["error", "replace"]
"""What to do with NaN or infinite voxels: refuse the volume, or replace them (see :func:`finite_volume`)."""
NONFINITE_CHOICES: tuple[NonFinite, ...] = get_args(NonFinite)

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_upsample(upsample: object) -> Upsample:
    """``upsample`` if it is a known mode, else :class:`InputError` listing the modes."""
    if isinstance(upsample, str) and upsample in UPSAMPLE_MODES:
        return upsample
    raise InputError(f"unknown upsample mode {upsample!r}: choose one of {', '.join(UPSAMPLE_MODES)}")


def check_nonfinite_choice(nonfinite: object) -> NonFinite:
    """``nonfinite`` if it is ``"error"`` or ``"replace"``, else :class:`InputError`."""
    if isinstance(nonfinite, str) and nonfinite in NONFINITE_CHOICES:
        return nonfinite
    raise InputError(f"unknown nonfinite choice {nonfinite!r}: choose one of {', '.join(NONFINITE_CHOICES)}")


def class_index(class_idx: object, class_names: tuple[str, ...]) -> int | None:
    """``class_idx`` as an index: None (the predicted class), an integer (numpy's too) or a class name.

    Booleans and floats are refused rather than read as 0, 1 or a truncated
    number. An index outside the named classes is refused before the model runs.
    """
    if class_idx is None:
        return None
    if isinstance(class_idx, (bool, np.bool_)):
        raise InputError(f"class {class_idx!r} is a boolean: give a class index (an integer) or a class name")
    if isinstance(class_idx, numbers.Integral):
        index = int(class_idx)
        if index < 0 or (class_names and index >= len(class_names)):
            count = len(class_names)
            known = f"0 to {count - 1} ({', '.join(class_names)})" if count else "a non-negative index"
            raise InputError(f"class index {index} is out of range: choose {known}")
        return index
    if isinstance(class_idx, str):
        if class_idx in class_names:
            return class_names.index(class_idx)
        known = ", ".join(class_names) or "the class indices"
        raise InputError(f"unknown class {class_idx!r}: choose one of {known}")
    if isinstance(class_idx, torch.Tensor) and class_idx.numel() == 1 and not class_idx.is_floating_point():
        return class_index(class_idx.item(), class_names)
    raise InputError(
        f"class {class_idx!r} is a {type(class_idx).__name__}: give a class index (an integer) or a class name"
    )


def _where(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat_index, shape))


def finite_volume(array32: np.ndarray, original: np.ndarray, nonfinite: NonFinite = "error") -> np.ndarray:
    """``array32`` (``original`` as float32, a private copy) with every voxel finite.

    With ``nonfinite="error"`` a volume holding NaN or ±Inf (also float64
    values that overflow float32) is refused with the count and the first
    index. With ``"replace"`` NaN becomes 0 and ±Inf the largest or smallest
    finite value of the volume, in place.
    """
    finite = np.isfinite(array32)
    if finite.all():
        return array32
    bad = ~finite
    count = int(bad.sum())
    first = _where(int(np.argmax(bad)), array32.shape)
    nan = int(np.isnan(array32).sum())
    overflow = 0
    if original.dtype.kind == "f" and original.dtype.itemsize > 4:
        overflow = int((np.isfinite(original) & bad).sum())
    infinite = count - nan - overflow
    parts = [f"{n} {what}" for n, what in ((nan, "NaN"), (infinite, "±Inf"), (overflow, "beyond float32")) if n]
    what = f"{count} of {array32.size} voxels are not finite ({', '.join(parts)}; the first at index {first})"
    if count == array32.size:
        raise NonFiniteInputError(f"the volume has no finite voxel: {what}: give a volume with finite values")
    if nonfinite == "error":
        remedy = (
            "rescale values beyond ±3.4e38 (float32's range)"
            if overflow == count
            else "fix or crop them, or choose nonfinite=replace (NaN becomes 0, ±Inf the volume's finite extremes)"
        )
        raise NonFiniteInputError(f"the volume has non-finite values: {what}: {remedy}")
    values = array32[finite]
    np.nan_to_num(array32, copy=False, nan=0.0, posinf=float(values.max()), neginf=float(values.min()))
    return array32


def check_volume_finite(values: np.ndarray, nonfinite: NonFinite = "error") -> None:
    """Raise what :func:`finite_volume` would raise for ``values``, leaving them alone.

    For the command line, which checks a volume file before loading the model.
    Integer volumes are always finite; float32 and smaller are checked in
    place, larger floats on a float32 copy (values beyond float32's range).

    Args:
        values: the volume as read, any shape.
        nonfinite: ``"error"`` refuses NaN/±Inf voxels; ``"replace"`` refuses only a volume with none finite.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        return
    if values.dtype.kind == "f" and values.dtype.itemsize <= 4 and bool(np.isfinite(values).all()):
        return
    finite_volume(np.array(values, dtype=np.float32), values, nonfinite)


def check_finite_input(x: torch.Tensor, original: np.ndarray) -> None:
    """After normalisation: values too large for float32 arithmetic give NaN or Inf here."""
    if bool(torch.isfinite(x).all()):
        return
    largest = float(np.max(np.abs(original))) if original.size else 0.0
    raise InputError(
        f"normalising the volume gives non-finite values (its largest magnitude is {largest:.3g}, "
        f"too large for float32 arithmetic up to {_FLOAT32_MAX:.3g}): rescale the volume"
    )


def check_finite_output(name: str, values: torch.Tensor) -> None:
    """A model output, score or map that holds NaN or Inf is an error, never a result."""
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    count = int((~finite).sum())
    raise ModelOutputError(
        f"the model's {name} holds {count} non-finite value(s) (NaN or Inf) for a finite input: "
        "its weights hold NaN/Inf or overflow; check the checkpoint (a model trained to divergence?)"
    )
