"""The napari reader: NIfTI files and DICOM series as image layers placed in millimetres.

The layer's world is the one every scan shares (see
:mod:`napari_vitcam.volumes.geometry`): DICOM patient coordinates in the order
(S, P, L), in mm. The layer shows the file's voxels (a read-only view, axes
reordered to the world axes they are closest to) and its ``affine`` carries
everything else: voxel size, flips, obliquity, origin. The metadata keeps the
source geometry (the file's affine in RAS, its axis order). CT scans open with
a soft-tissue window.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from napari_vitcam.volumes.base import Volume, VolumeReader
from napari_vitcam.volumes.dicom import DicomReader
from napari_vitcam.volumes.geometry import WORLD_AXES, world_view
from napari_vitcam.volumes.nifti import NiftiReader

#: The formats napari gets from this plugin (napari reads .npy itself).
NAPARI_READERS: tuple[VolumeReader, ...] = (NiftiReader(), DicomReader())

SOFT_TISSUE_WINDOW = (40.0, 400.0)
"""CT window (level, width) in Hounsfield units for the first view: soft tissue."""

METADATA_KEY = "volume"
"""Where a layer's metadata keeps its source geometry."""


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader hook: a function that reads ``path``, or None when it is no NIfTI file or DICOM series."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    for reader in NAPARI_READERS:
        if reader.can_read(Path(path)):
            return partial(read_layers, reader=reader)
    return None


def read_layers(path: str | list[str], *, reader: VolumeReader) -> list[tuple]:
    """The layer data tuple of the volume at ``path``."""
    if isinstance(path, list):
        path = path[0]
    return [layer_data(reader.read(Path(path)))]


def soft_tissue_limits() -> tuple[float, float]:
    level, width = SOFT_TISSUE_WINDOW
    return (level - width / 2, level + width / 2)


def layer_data(volume: Volume) -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari ``(data, kwargs, "image")`` tuple for ``volume``, placed in the shared world."""
    source = volume.source
    name = source.name if source.is_dir() else source.name.split(".")[0] or source.name
    metadata: dict[str, Any] = {
        METADATA_KEY: {
            **volume.describe(),
            "world": "napari-vitcam: DICOM patient coordinates (LPS) in the order (S, P, L), mm",
            **dict(volume.metadata),
        }
    }
    kwargs: dict[str, Any] = {"name": name, "metadata": metadata}
    view = world_view(volume.array, volume.affine)
    if view.affine is not None and volume.array.ndim == 3:
        metadata[METADATA_KEY]["layer_axes_from_file"] = list(view.order)
        kwargs.update(affine=view.affine, units=("mm",) * 3, axis_labels=WORLD_AXES)
    if volume.modality == "CT":
        kwargs["contrast_limits"] = soft_tissue_limits()
    return view.array, kwargs, "image"
