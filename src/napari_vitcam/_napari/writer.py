"""The napari writer: a heatmap (or any 3D image layer) as NIfTI, with its world geometry and provenance.

The layer's voxel-to-world transform (all of scale, translate, rotate,
shear and affine) is read as coordinates in the plugin's world (see
:mod:`napari_vitcam.volumes.geometry`) and written as the NIfTI affine in
RAS, with the axes in the order closest to (R, A, S): a heatmap of a scan
read from NIfTI reloads (nibabel, ITK-SNAP, 3D Slicer...) with that scan's
affine. The layer's metadata (method, class, target layer, checkpoint
digests) goes into the header description and a JSON header extension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.transforms import CompositeAffine

from napari_vitcam.core.errors import VitcamError
from napari_vitcam.volumes.base import LayerWriteError
from napari_vitcam.volumes.geometry import nifti_geometry
from napari_vitcam.volumes.writing import write_heatmap


def data_to_world(attributes: dict[str, Any], ndim: int) -> np.ndarray:
    """The (ndim+1)² matrix napari uses to place a layer with these ``attributes`` (``affine`` after the rest)."""
    composite = CompositeAffine(
        scale=attributes.get("scale", (1.0,) * ndim),
        translate=attributes.get("translate", (0.0,) * ndim),
        rotate=attributes.get("rotate"),
        shear=attributes.get("shear"),
        ndim=ndim,
    )
    affine = np.asarray(attributes.get("affine", np.eye(ndim + 1)), dtype=float)
    return affine @ composite.affine_matrix


def write_nifti(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 writer hook: one 3D image layer to ``path`` (``.nii`` or ``.nii.gz``)."""
    array = np.asarray(data)
    if array.ndim != 3:
        raise LayerWriteError(f"only 3D layers can be saved as NIfTI, this one has shape {array.shape}")
    provenance = dict(attributes.get("metadata") or {})
    scan = provenance.get("source_file")
    if scan and Path(path).expanduser().resolve() == Path(scan):
        raise LayerWriteError(
            f"{Path(path).name} is the scan this heatmap explains (layer {provenance.get('source_layer', '')!r}): "
            "save the heatmap under another file name"
        )
    order, affine = nifti_geometry(data_to_world(attributes, 3))
    provenance.setdefault("layer_name", attributes.get("name", ""))
    try:
        written = write_heatmap(
            Path(path), np.transpose(array, order), affine=affine, provenance=provenance, force=True
        )
    except VitcamError as error:  # e.g. the folder is gone: say so (napari reads a ValueError as "no writer fits")
        if isinstance(error, LayerWriteError):
            raise
        raise LayerWriteError(str(error)) from None
    return [str(written)]
