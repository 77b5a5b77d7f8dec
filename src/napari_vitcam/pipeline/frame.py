"""The model's frame: the orientation and spacing its training volumes had, a volume put into it and a heatmap put back.

A model trained on volumes reoriented to, say, RAS (MONAI's
``Orientationd(axcodes="RAS")``, nibabel's ``as_closest_canonical``) expects
array axis 0 to run toward the patient's right, axis 1 toward anterior and
axis 2 toward superior. A scan stored in another order, or read by a reader
that orders the axes differently, must be reoriented before the model sees it,
or the heatmap is of a volume the model never learnt to read.

Reorienting to the closest orientation is exact: the axes are permuted and
flipped (a view, no resampling), so the heatmap maps back onto the scan's own
voxel grid exactly (the same permutation and flips, undone). Oblique scans
keep their obliquity, as with MONAI and nibabel.

Spacing: after reorienting, each model axis k has the volume's voxel size
``s_k`` (mm, the affine's column norm) and the model declares ``t_k``. As
MONAI's ``Spacingd`` does (its defaults), the resampled volume keeps the first
voxel's centre, has ``n'_k = round((n_k - 1) * s_k / t_k) + 1`` voxels and is
interpolated with the border voxels repeated beyond the edge. It is then
brought to the model's ``spatial_size`` ``S_k``:

* ``fit="resize"``: scaled to ``S_k`` (the spec's ``resize_mode``; voxel
  centres keep their place, ``align_corners=False``). Two axis-aligned
  rescalings compose to one, so a declared spacing changes nothing here and
  the volume is resized once, as without it.
* ``fit="crop_or_pad"``: centre-cropped (start ``n'_k // 2 - S_k // 2``) or
  zero-padded (``(S_k - n'_k) // 2`` before), as MONAI's
  ``ResizeWithPadOrCrop``.

Resampling, cropping and padding compose to one map per axis, model voxel
``j`` -> volume voxel ``u = (j + offset) * t_k / s_k`` (``offset``: the crop's
start, or minus the padding before), so the volume is interpolated once
(:func:`fit_volume`: separable, linear or nearest, on the tensor's device) and
the heatmap is mapped back once: volume voxel ``u`` lies at model input
coordinate ``m = u * s_k / t_k - offset + 0.5`` (voxel ``j`` spans
``[j, j + 1)``), where :func:`~napari_vitcam.engine.voxel_map.tokens_to_voxels`
samples the token map directly (:meth:`FramePlan.map_back`). Voxels the
model did not see (cropped away) get 0.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_vitcam.core.errors import InputError
from napari_vitcam.core.vocabulary import Triple, Upsample
from napari_vitcam.engine.token_grid import TokenGrid
from napari_vitcam.engine.voxel_map import tokens_to_voxels
from napari_vitcam.models.spec import InputSpec

#: Each orientation letter: (the RAS axis it runs along, +1 toward R/A/S or -1 toward L/P/I).
AXIS_CODES = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class ModelFrame:
    """The orientation and voxel spacing a model's training volumes had.

    Args:
        orientation: three letters (nibabel's and MONAI's axis codes), one of R/L, one of A/P and one of
            S/I: array axis k of the model's input runs toward ``orientation[k]``. E.g. ``"RAS"``. None:
            the volume's axes as given.
        spacing: the voxel size in mm along the model's three axes, or None (the volume's own).
    """

    orientation: str | None = None
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.spacing is not None:
            spacing = self.spacing
            if (
                not isinstance(spacing, (tuple, list))
                or len(spacing) != 3
                or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in spacing)
            ):
                raise InputError(
                    f"spacing {spacing!r} is not three voxel sizes in mm above 0: give e.g. (1.0, 1.0, 1.0)"
                )
            object.__setattr__(self, "spacing", (float(spacing[0]), float(spacing[1]), float(spacing[2])))
        if self.orientation is None:
            return
        codes = str(self.orientation).upper()
        if len(codes) != 3 or any(c not in AXIS_CODES for c in codes) or {AXIS_CODES[c][0] for c in codes} != {0, 1, 2}:
            raise InputError(
                f"orientation {self.orientation!r} is not three axis codes: use one of R/L, A/P and S/I, e.g. 'RAS'"
            )
        object.__setattr__(self, "orientation", codes)


@dataclass(frozen=True)
class Reorientation:
    """How a volume's spatial axes become the model frame's: permute, then flip (exact, reversible).

    ``order[k]`` is the volume axis that becomes model axis k; ``flips[k]``
    says whether model axis k is reversed after the permutation.
    """

    order: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flips)

    def apply(self, volume: Any) -> np.ndarray:
        """``volume`` ((D, H, W) or (C, D, H, W)) in the model frame: a view, never a copy or a change."""
        array = np.asarray(volume)
        lead = array.ndim - 3
        out = np.transpose(array, (*range(lead), *(lead + k for k in self.order)))
        flipped = tuple(lead + k for k in range(3) if self.flips[k])
        return np.flip(out, axis=flipped) if flipped else out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """A (D, H, W) map in the model frame back on the volume's own voxel grid."""
        flipped = tuple(k for k in range(3) if self.flips[k])
        out = np.flip(array, axis=flipped) if flipped else array
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.order)))

    def affine(self, affine_ras: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The voxel-to-RAS affine of the reoriented volume (``shape``: the volume's spatial shape)."""
        out = np.array(affine_ras, dtype=float)
        out[:, :3] = out[:, list(self.order)]
        for k in range(3):
            if self.flips[k]:
                size = shape[self.order[k]]
                out[:3, 3] += out[:3, k] * (size - 1)
                out[:3, k] *= -1
        return out


def reorientation(affine_ras: np.ndarray, frame: ModelFrame) -> Reorientation:
    """The permutation and flips that bring a volume with voxel-to-RAS ``affine_ras`` closest to ``frame``.

    Args:
        affine_ras: 4x4 from the volume's (spatial) voxel indices to RAS+ mm.
        frame: the model's frame.
    """
    if frame.orientation is None:
        return Reorientation((0, 1, 2), (False, False, False))
    linear = np.asarray(affine_ras, dtype=float)[:3, :3]
    cosines = linear / np.maximum(np.linalg.norm(linear, axis=0), 1e-12)
    targets = [AXIS_CODES[c] for c in frame.orientation]
    order = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(cosines[targets[k][0], perm[k]]) for k in range(3)),
    )
    flips = tuple(bool(cosines[targets[k][0], order[k]] * targets[k][1] < 0) for k in range(3))
    return Reorientation((int(order[0]), int(order[1]), int(order[2])), (flips[0], flips[1], flips[2]))


def spec_frame(spec_input: InputSpec) -> ModelFrame | None:
    """The frame a checkpoint's input spec declares (orientation and spacing), or None when it declares neither."""
    if spec_input.orientation is None and spec_input.spacing is None:
        return None
    return ModelFrame(spec_input.orientation, spec_input.spacing)


@dataclass(frozen=True)
class AxisFit:
    """One model axis: model voxel ``j`` samples volume voxel ``(j + offset) * scale`` (see the module doc).

    ``length``: voxels of the resampled (not yet cropped or padded) axis;
    model voxels with ``j + offset`` outside ``0..length - 1`` are padding.
    """

    scale: float
    offset: int
    length: int
    size: int

    def source_index(self, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For model voxels ``j`` (float64): the volume coordinate and whether the voxel is not padding."""
        i = j + self.offset
        inside = (i >= 0) & (i <= self.length - 1)
        return i * self.scale, inside


@dataclass(frozen=True)
class FramePlan:
    """How a volume becomes the model input and its heatmap comes back (see the module doc).

    ``turn``: the exact reorientation (None: none). ``axes``: the per-axis
    resampling and crop/pad to the model's size (None: the spec's plain
    resize). ``report``: what was done, for ``VolumeExplanation.preprocessing``.
    """

    turn: Reorientation | None
    axes: tuple[AxisFit, AxisFit, AxisFit] | None
    report: dict[str, Any]
    shape: Triple | None = None
    """The reoriented volume's spatial shape (with ``axes``)."""

    @property
    def placement(self) -> tuple[tuple[float, float], ...] | None:
        """Per model axis ``(a, b)``: reoriented volume voxel ``u`` lies at model input coordinate ``a * u + b``."""
        if self.axes is None:
            return None
        return tuple((1.0 / axis.scale, 0.5 - axis.offset) for axis in self.axes)

    def map_back(self, token_map: torch.Tensor, grid: TokenGrid, upsample: Upsample) -> torch.Tensor:
        """A (1, d, h, w) token map on the reoriented volume's voxels (one interpolation; cropped voxels get 0)."""
        assert self.axes is not None and self.shape is not None
        return tokens_to_voxels(token_map, grid, self.shape, mode=upsample, placement=self.placement)[0]

    def orient(self, volume: Any) -> Any:
        """``volume`` ((D, H, W) or (C, D, H, W)) in the model's orientation (a view)."""
        return self.turn.apply(volume) if self.turn is not None else volume

    def back(self, heatmap: np.ndarray) -> np.ndarray:
        """A map on the reoriented volume's grid back on the volume's own grid (exact)."""
        return self.turn.undo(heatmap) if self.turn is not None else heatmap


def _fit_axis(n: int, size: int, scale: float) -> AxisFit:
    length = int(np.round((n - 1) / scale)) + 1 if n > 1 else 1
    offset = length // 2 - size // 2 if length >= size else -((size - length) // 2)
    return AxisFit(scale, offset, length, size)


def plan_frame(
    frame: ModelFrame | None, affine_ras: np.ndarray | None, shape: Triple | None, spec_input: InputSpec
) -> FramePlan:
    """The reorientation and resampling that bring a volume into the model's frame, and what to report.

    Args:
        frame: the model's orientation and spacing (None: neither declared).
        affine_ras: the volume's voxel-to-RAS affine (its last three axes), or None when unknown.
        shape: the volume's spatial shape (None: not a volume; nothing is planned).
        spec_input: the model's input spec (``spatial_size``, ``fit``).

    Without geometry the volume is used as stored, and when the model declares
    an orientation or a spacing the report says so in one line (``frame_note``).
    """
    if affine_ras is not None:  # a malformed affine is refused whether or not the model needs it
        affine_ras = _checked_affine(affine_ras)
    report: dict[str, Any] = {"fit": spec_input.fit}
    declared = frame is not None and (frame.orientation is not None or frame.spacing is not None)
    if frame is not None:
        report.update(frame=frame.orientation, model_spacing_mm=None if frame.spacing is None else list(frame.spacing))
    turn = None
    spacing: tuple[float, ...] | None = None
    if declared and affine_ras is None:
        wanted = " and ".join(
            part
            for part in (
                f"{frame.orientation}-oriented" if frame and frame.orientation else "",
                f"{_mm(frame.spacing)} spacing" if frame and frame.spacing else "",
            )
            if part
        )
        report["frame_note"] = (
            f"the model expects {wanted} volumes but this volume's geometry is unknown: it was given as stored "
            "(open it from NIfTI or DICOM, or pass its affine)"
        )
    elif declared and affine_ras is not None and shape is not None:
        assert frame is not None
        turn = reorientation(affine_ras, frame)
        if frame.orientation is not None:
            report["reorientation"] = {"order": list(turn.order), "flips": list(turn.flips)}
        if turn.is_identity:
            turn = None
        oriented = turn.affine(affine_ras, shape) if turn is not None else np.asarray(affine_ras, dtype=float)
        spacing = tuple(float(v) for v in np.linalg.norm(oriented[:3, :3], axis=0))
        report["volume_spacing_mm"] = list(spacing)
    if spec_input.fit == "resize" or shape is None:
        return FramePlan(turn, None, report)
    oriented_shape = tuple(shape[k] for k in turn.order) if turn is not None else tuple(shape)
    wanted_mm = frame.spacing if frame is not None and frame.spacing is not None and spacing is not None else None
    scales = [wanted_mm[k] / spacing[k] if wanted_mm and spacing else 1.0 for k in range(3)]
    axes = tuple(_fit_axis(oriented_shape[k], spec_input.spatial_size[k], scales[k]) for k in range(3))
    report["resampled_shape"] = [axis.length for axis in axes]
    report["crop_start"] = [axis.offset for axis in axes]  # negative: padding before
    return FramePlan(
        turn, (axes[0], axes[1], axes[2]), report, (oriented_shape[0], oriented_shape[1], oriented_shape[2])
    )


def _checked_affine(affine_ras: Any) -> np.ndarray:
    """``affine_ras`` as a 4x4 float array with finite values and three axes of non-zero length."""
    affine = np.asarray(affine_ras, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"the affine must be a finite 4x4 matrix (voxel to RAS mm), got shape {affine.shape}")
    if np.linalg.matrix_rank(affine[:3, :3]) < 3:
        raise InputError("the affine maps the voxel axes onto fewer than 3 directions: give the scan's true affine")
    return affine


def _mm(spacing: tuple[float, float, float]) -> str:
    return "×".join(f"{v:g}" for v in spacing) + " mm"


def fit_volume(volume: torch.Tensor, axes: tuple[AxisFit, AxisFit, AxisFit], mode: str) -> torch.Tensor:
    """A (C, D, H, W) tensor resampled, cropped and padded to the model's size in one interpolation per axis.

    Separable: each axis is gathered at two taps (``mode="trilinear"``: linear
    between the voxel centres around each sample, border voxels repeated) or
    one (``"nearest"``), on the tensor's device; padding is 0.
    """
    out = volume
    # the axes that shrink first, so the intermediates stay small
    for dim in sorted(range(3), key=lambda k: axes[k].size / max(out.shape[k + 1], 1)):
        axis, n = axes[dim], out.shape[dim + 1]
        position, inside = axis.source_index(torch.arange(axis.size, device=out.device, dtype=torch.float64))
        position = position.clamp(0, n - 1)
        shape = [1, 1, 1, 1]
        shape[dim + 1] = axis.size
        keep = inside.to(out.dtype).reshape(shape)
        if mode == "nearest":
            index = torch.floor(position + 0.5).long().clamp_(0, n - 1)
            out = out.index_select(dim + 1, index) * keep
            continue
        lower = position.floor()
        frac = (position - lower).to(out.dtype).reshape(shape)
        i0 = lower.long().clamp_(0, n - 1)
        i1 = (i0 + 1).clamp_(max=n - 1)
        out = (out.index_select(dim + 1, i0) * (1 - frac) + out.index_select(dim + 1, i1) * frac) * keep
    return out.contiguous()
