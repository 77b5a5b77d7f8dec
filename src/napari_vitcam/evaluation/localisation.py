"""Localisation metrics: does a heatmap agree with a mask?

Each function takes one heatmap and one mask on the same voxel grid (numpy
arrays or tensors). Distances are in voxels, or in physical units when a
voxel ``spacing`` is given, so a tolerance means the same on an anisotropic
scan along every axis.

* Pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation
  Backprop", IJCV): a hit when the map's maximum lies inside the mask
  (strict) or within a tolerance of it.
* Energy-based pointing game (Wang et al. 2020, "Score-CAM: Score-Weighted
  Visual Explanations for Convolutional Neural Networks", CVPRW): the share of
  the map's (non-negative) mass inside the mask; also called relevance mass
  accuracy (Arras et al. 2022).
* Best-threshold IoU: the IoU of the mask with the map thresholded at the
  level that matches it best (every distinct value tried exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from napari_vitcam.core.errors import InputError

Spacing = Sequence[float] | None


@dataclass(frozen=True)
class MaskScores:
    """The localisation metrics of one heatmap against one region.

    Args:
        label: the region's label value (1 for a binary mask).
        voxels: how many voxels the region has.
        pointing_strict: 1.0 when the map's maximum lies inside the region.
        pointing_tolerant: 1.0 when it lies within the tolerance of the region.
        peak_distance: distance from the maximum to the region (0 inside), in
            voxels or in the spacing's units.
        energy: share of the map's mass inside the region.
        iou: the best IoU over all thresholds of the map.
        iou_threshold: the threshold that gives it.
    """

    label: int
    voxels: int
    pointing_strict: float
    pointing_tolerant: float
    peak_distance: float
    energy: float
    iou: float
    iou_threshold: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _as_numpy(array: object) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


def _check(heatmap: object, mask: object) -> tuple[np.ndarray, np.ndarray]:
    heat = _as_numpy(heatmap).astype(np.float64, copy=False)
    region = _as_numpy(mask).astype(bool, copy=False)
    if heat.shape != region.shape:
        raise InputError(
            f"the heatmap has shape {heat.shape} but the mask has {region.shape}: "
            "give a mask on the heatmap's voxel grid (or resample it there)"
        )
    if not region.any():
        raise InputError("the mask is empty: give a mask with at least one voxel set")
    if not np.isfinite(heat).all():
        raise InputError(f"the heatmap has {int((~np.isfinite(heat)).sum())} non-finite values: recompute it")
    return heat, region


def _spacing(spacing: Spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.asarray(spacing, dtype=np.float64)
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise InputError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return values


def peak_distance(heatmap: object, mask: object, spacing: Spacing = None) -> float:
    """Distance from the heatmap's maximum (the first, if tied) to the nearest mask voxel; 0 inside.

    Args:
        heatmap: the map, any shape.
        mask: the region, same shape.
        spacing: voxel size along each axis (distances in its units); None: voxels.
    """
    heat, region = _check(heatmap, mask)
    scale = _spacing(spacing, heat.ndim)
    peak = np.array(np.unravel_index(int(np.argmax(heat)), heat.shape), dtype=np.float64)
    if region[tuple(peak.astype(int))]:
        return 0.0
    inside = np.argwhere(region).astype(np.float64)
    return float(np.sqrt((((inside - peak) * scale) ** 2).sum(axis=1).min()))


def pointing_game(heatmap: object, mask: object, tolerance: float = 0.0, spacing: Spacing = None) -> bool:
    """A hit when the heatmap's maximum lies inside ``mask`` or within ``tolerance`` of it.

    Args:
        heatmap: the map.
        mask: the region, same shape.
        tolerance: how far outside the region still counts (0: strict).
        spacing: voxel size along each axis; None: the tolerance is in voxels.
    """
    return peak_distance(heatmap, mask, spacing) <= tolerance


def energy_pointing(heatmap: object, mask: object) -> float:
    """Share of the heatmap's (non-negative) mass inside ``mask``; 0 for an all-zero heatmap."""
    heat, region = _check(heatmap, mask)
    heat = np.clip(heat, 0.0, None)
    total = heat.sum()
    return float(heat[region].sum() / total) if total > 0 else 0.0


def best_threshold_iou(heatmap: object, mask: object) -> tuple[float, float]:
    """The best IoU of ``heatmap >= t`` with ``mask`` over all thresholds t, and that t.

    Every distinct heatmap value is tried as a threshold (exactly, via one sort).
    """
    heat, region = _check(heatmap, mask)
    values = heat.ravel()
    order = np.argsort(-values, kind="stable")
    sorted_values = values[order]
    hits = np.cumsum(region.ravel()[order])
    count = np.arange(1, values.size + 1)
    iou = hits / (count + region.sum() - hits)
    # A threshold keeps every voxel at or above it: only the last of a run of ties is reachable.
    last_of_tie = np.append(sorted_values[1:] != sorted_values[:-1], True)
    iou = np.where(last_of_tie, iou, -1.0)
    best = int(np.argmax(iou))
    return float(iou[best]), float(sorted_values[best])


def mask_scores(
    heatmap: object, mask: object, tolerance: float, *, spacing: Spacing = None, label: int = 1
) -> MaskScores:
    """Every localisation metric of one heatmap against one region.

    Args:
        heatmap: the map.
        mask: the region (boolean, or non-zero voxels), same shape.
        tolerance: the pointing game's tolerance, in voxels or the spacing's units.
        spacing: voxel size along each axis.
        label: the region's label, recorded in the result.
    """
    region = _as_numpy(mask).astype(bool, copy=False)
    distance = peak_distance(heatmap, region, spacing)
    iou, threshold = best_threshold_iou(heatmap, region)
    return MaskScores(
        label=label,
        voxels=int(region.sum()),
        pointing_strict=float(distance == 0.0),
        pointing_tolerant=float(distance <= tolerance),
        peak_distance=distance,
        energy=energy_pointing(heatmap, region),
        iou=iou,
        iou_threshold=threshold,
    )


def label_scores(heatmap: object, labels: object, tolerance: float, *, spacing: Spacing = None) -> list[MaskScores]:
    """:func:`mask_scores` for each non-zero label of a labels array (an organ map, several lesions).

    Args:
        heatmap: the map.
        labels: integer labels on the same grid; 0 is background.
        tolerance: the pointing game's tolerance.
        spacing: voxel size along each axis.
    """
    values = _as_numpy(labels)
    if values.dtype.kind not in "biu":
        raise InputError(f"labels must be integers or booleans, got {values.dtype}: give a Labels layer or mask")
    present = [int(v) for v in np.unique(values) if v != 0]
    if not present:
        raise InputError("the labels layer is empty: paint the region to compare with first")
    return [mask_scores(heatmap, values == v, tolerance, spacing=spacing, label=v) for v in present]


def heatmap_scores(heatmap: object, mask: object, tolerance: float) -> dict[str, float]:
    """The four headline metrics of one heatmap: strict and tolerant pointing, energy ("mass") and IoU."""
    scores = mask_scores(heatmap, mask, tolerance)
    return {
        "pointing_strict": scores.pointing_strict,
        "pointing_tolerant": scores.pointing_tolerant,
        "mass": scores.energy,
        "iou": scores.iou,
    }
