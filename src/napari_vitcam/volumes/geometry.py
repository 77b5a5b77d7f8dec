"""World coordinates: RAS (NIfTI), LPS (DICOM) and the napari world, and putting a volume's axes in world order.

napari layers from this package live in one world shared by every scan: the
DICOM patient coordinates (LPS, mm) in reversed order, ``(S, P, L)`` — as
itk-napari does. So napari's default 2D view of an axial scan is the
radiological one: slices along the body axis (superior up the slider),
anterior at the top, the patient's right on the left of the screen.

napari can only slice data whose axes run (nearly) along the world axes, so a
layer shows the file's array with its axes reordered (a view, no copy) to the
world axes they are closest to; the affine says the rest (flips, obliquity,
spacing, origin). :func:`layer_geometry` does that; :func:`nifti_geometry`
chooses the axis order of a written NIfTI the same way for RAS.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

WORLD_AXES = ("S", "P", "L")
"""The napari world axes: toward superior, posterior and the patient's left, in mm."""

RAS_TO_WORLD = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""RAS (x, y, z) to napari world (S, P, L) = (z, -y, -x)."""

WORLD_TO_RAS = np.linalg.inv(RAS_TO_WORLD)


def closest_axes(linear: np.ndarray) -> tuple[int, int, int]:
    """The order of the voxel axes that lines each up with the world axis it is closest to.

    Args:
        linear: 3x3, column j is the world direction of voxel axis j.

    Returns:
        ``order`` with ``order[k]`` = the voxel axis closest to world axis k.
    """
    cosines = np.abs(linear) / np.maximum(np.linalg.norm(linear, axis=0), 1e-12)
    best = max(itertools.permutations(range(3)), key=lambda order: sum(cosines[k, order[k]] for k in range(3)))
    return (int(best[0]), int(best[1]), int(best[2]))


def permuted(affine: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """``affine`` for the array ``np.transpose(array, order)`` (same voxels, same world points)."""
    out = np.array(affine, dtype=float)
    out[:, :3] = out[:, list(order)]
    return out


@dataclass(frozen=True)
class LayerGeometry:
    """How a volume's array becomes a napari layer: ``np.transpose(array, order)`` placed by ``affine``."""

    order: tuple[int, int, int]
    affine: np.ndarray
    """4x4 from layer voxel indices to the napari world (S, P, L) in mm."""


def layer_geometry(affine_ras: np.ndarray) -> LayerGeometry:
    """The layer order and napari affine of a volume with voxel-to-RAS ``affine_ras``."""
    world = RAS_TO_WORLD @ np.asarray(affine_ras, dtype=float)
    order = closest_axes(world[:3, :3])
    return LayerGeometry(order, permuted(world, order))


def nifti_geometry(world_affine: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """The axis order and RAS affine to write a layer with napari-world ``world_affine`` as NIfTI.

    The axes are put in the order closest to (R, A, S), as NIfTI converters
    store them, so a map of a scan read from NIfTI is written with that scan's
    own affine.
    """
    ras = WORLD_TO_RAS @ np.asarray(world_affine, dtype=float)
    order = closest_axes(ras[:3, :3])
    return order, permuted(ras, order)


@dataclass(frozen=True)
class WorldView:
    """A volume's array with its axes in world order: what napari shows and what the model is given.

    ``array`` is ``np.transpose(volume.array, order)`` (a read-only view);
    :meth:`to_file` puts an array of this layout (a heatmap) back in the
    file's axis order.
    """

    array: np.ndarray
    order: tuple[int, int, int]
    affine: np.ndarray | None
    """4x4 from ``array`` indices to the napari world (S, P, L) in mm, or None without geometry."""

    def to_file(self, array: np.ndarray) -> np.ndarray:
        """``array`` (laid out like :attr:`array`) in the file's axis order."""
        return np.transpose(array, np.argsort(self.order))


def world_view(array: np.ndarray, affine_ras: np.ndarray | None) -> WorldView:
    """``array`` (the file's axis order, voxel-to-RAS ``affine_ras``) with its axes in world order.

    Without geometry, or for a volume with channels, the array stays as it is.
    """
    if affine_ras is None or array.ndim != 3:
        return WorldView(array, (0, 1, 2), None if affine_ras is None else RAS_TO_WORLD @ affine_ras)
    geometry = layer_geometry(affine_ras)
    return WorldView(np.transpose(array, geometry.order), geometry.order, geometry.affine)
