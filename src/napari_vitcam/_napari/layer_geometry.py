"""The voxel-to-RAS affine of a layer, for a model that declares its orientation or spacing.

A layer this plugin's reader opened keeps its source geometry in
``metadata["volume"]`` (the file's RAS affine and the file's axis order, see
:mod:`napari_vitcam._napari.reader`): the layer's data is the file's array with
its axes reordered, so its RAS affine is the file's, permuted the same way. A
layer from this reader without that metadata (a copy whose metadata was
dropped) is placed in the plugin's world, ``(S, P, L)`` in mm: its
``data_to_world`` transform gives the affine. Any other layer's geometry is
unknown (None): napari's world has no anatomical meaning by itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from napari.layers import Layer

from napari_vitcam._napari.layer_input import SPATIAL_DIMS, full_resolution
from napari_vitcam._napari.reader import METADATA_KEY
from napari_vitcam.volumes.geometry import WORLD_TO_RAS, permuted

PLUGIN = "napari-vitcam"


def _from_metadata(layer: Layer) -> np.ndarray | None:
    source = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, Mapping) else None
    if not isinstance(source, Mapping) or source.get("affine_ras") is None:
        return None
    affine = np.asarray(source["affine_ras"], dtype=float)
    order = tuple(int(k) for k in source.get("layer_axes_from_file") or (0, 1, 2))
    file_shape = list(source.get("shape") or ())[-SPATIAL_DIMS:]
    data_shape = list(full_resolution(layer).shape)[-SPATIAL_DIMS:]
    if affine.shape != (4, 4) or sorted(order) != [0, 1, 2] or [file_shape[k] for k in order] != data_shape:
        return None  # the layer's data is no longer the file's: fall back on where napari shows it
    return permuted(affine, (order[0], order[1], order[2]))


def _from_world(layer: Layer) -> np.ndarray:
    """The layer's data-to-world map of its last three axes, in the plugin's world (S, P, L), as RAS."""
    lead = [0.0] * (layer.ndim - SPATIAL_DIMS)
    origin = np.asarray(layer.data_to_world([*lead, 0.0, 0.0, 0.0]), dtype=float)[-SPATIAL_DIMS:]
    world = np.eye(4)
    world[:3, 3] = origin
    for k in range(SPATIAL_DIMS):
        unit = [0.0] * SPATIAL_DIMS
        unit[k] = 1.0
        world[:3, k] = np.asarray(layer.data_to_world([*lead, *unit]), dtype=float)[-SPATIAL_DIMS:] - origin
    return WORLD_TO_RAS @ world


def layer_affine_ras(layer: Layer) -> np.ndarray | None:
    """4x4 from the layer's data indices (last three axes) to RAS mm, or None when its geometry is unknown."""
    affine = _from_metadata(layer)
    if affine is not None:
        return affine
    from_reader = METADATA_KEY in getattr(layer, "metadata", {}) or layer.source.reader_plugin == PLUGIN
    return _from_world(layer) if from_reader else None
