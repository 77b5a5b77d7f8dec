"""The model's frame: the orientation its training volumes had, a volume put into it and a heatmap put back.

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

Spacing is not handled here yet: with the pipeline's resize to the model's
input size, a declared spacing would change nothing (two axis-aligned
rescalings compose to one); it matters only with crop-or-pad fitting, which
the spec does not have yet.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vitcam.core.errors import InputError

#: Each orientation letter: (the RAS axis it runs along, +1 toward R/A/S or -1 toward L/P/I).
AXIS_CODES = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class ModelFrame:
    """The orientation a model's training volumes had.

    Args:
        orientation: three letters (nibabel's and MONAI's axis codes), one of R/L, one of A/P and one of
            S/I: array axis k of the model's input runs toward ``orientation[k]``. E.g. ``"RAS"``.
    """

    orientation: str

    def __post_init__(self) -> None:
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
    linear = np.asarray(affine_ras, dtype=float)[:3, :3]
    cosines = linear / np.maximum(np.linalg.norm(linear, axis=0), 1e-12)
    targets = [AXIS_CODES[c] for c in frame.orientation]
    order = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(cosines[targets[k][0], perm[k]]) for k in range(3)),
    )
    flips = tuple(bool(cosines[targets[k][0], order[k]] * targets[k][1] < 0) for k in range(3))
    return Reorientation((int(order[0]), int(order[1]), int(order[2])), (flips[0], flips[1], flips[2]))


def frame_for(frame: ModelFrame | None, affine_ras: np.ndarray | None) -> tuple[Reorientation | None, dict[str, Any]]:
    """The reorientation :func:`~napari_vitcam.pipeline.explain.explain_volume` applies, and what to report.

    Without a frame nothing changes; with a frame but no geometry nothing
    changes either, and the report says so in one line.
    """
    if frame is None:
        return None, {}
    if affine_ras is None:
        note = (
            f"the model expects {frame.orientation}-oriented volumes but this volume's geometry is unknown: "
            "it was given as stored (open it from NIfTI or DICOM, or pass its affine)"
        )
        return None, {"frame": frame.orientation, "frame_note": note}
    turn = reorientation(affine_ras, frame)
    return turn, {"frame": frame.orientation, "reorientation": {"order": list(turn.order), "flips": list(turn.flips)}}
