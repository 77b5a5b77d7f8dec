"""Which layers can be explained, and which of a layer's voxels go to the model.

The last three data axes of an image layer are its spatial axes (D, H, W).
Axes before them are fixed at the point the viewer shows (a time point, for
example), except one: when the model takes C > 1 channels, the leading axis
of length C nearest to the spatial axes is the channel axis and is passed
whole. No Qt here; reading the data is left to the caller's thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Layer

from napari_vitcam.core.errors import InputError

SPATIAL_DIMS = 3


def is_volume_layer(layer: Layer) -> bool:
    """An image layer with at least three spatial dimensions (RGB layers have one fewer)."""
    return isinstance(layer, Image) and not layer.rgb and layer.ndim >= SPATIAL_DIMS


def volume_layers(layers: Iterable[Layer]) -> list[Image]:
    """The layers that can be explained, in the order given."""
    return [layer for layer in layers if is_volume_layer(layer)]


def full_resolution(layer: Image):
    """The layer's data, or its first (full-resolution) level when it is multiscale."""
    return layer.data[0] if layer.multiscale else layer.data


@dataclass(frozen=True)
class VolumeSelection:
    """The part of a layer's data one run explains, and how its heatmap maps back.

    ``fixed`` maps each leading axis that is held at one index (a time point)
    to that index; ``channel_axis`` is the axis passed whole to a multi-channel
    model, or None.
    """

    layer_name: str
    data_shape: tuple[int, ...]
    fixed: tuple[tuple[int, int], ...] = ()
    channel_axis: int | None = None

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.data_shape[-SPATIAL_DIMS:]  # type: ignore[return-value]

    @property
    def index(self) -> tuple[int | slice, ...]:
        """The index into the layer's data that gives the model input."""
        fixed = dict(self.fixed)
        return tuple(fixed.get(axis, slice(None)) for axis in range(len(self.data_shape)))

    def read(self, data) -> np.ndarray:
        """The model input ((D, H, W), or (C, D, H, W) with a channel axis) as a numpy array."""
        return np.asarray(data[self.index])

    def embed(self, heatmap: np.ndarray) -> np.ndarray:
        """A heatmap of the spatial shape placed into an array of the layer's data shape.

        Fixed axes are zero away from the explained index; a channel axis
        repeats the map, since it explains all channels at once.
        """
        if heatmap.shape != self.spatial_shape:
            raise ValueError(f"heatmap shape {heatmap.shape} is not the spatial shape {self.spatial_shape}")
        if len(self.data_shape) == SPATIAL_DIMS:
            return heatmap
        out = np.zeros(self.data_shape, dtype=heatmap.dtype)
        self.write(out, heatmap)
        return out

    def write(self, out: np.ndarray, heatmap: np.ndarray) -> None:
        """Write a heatmap of the spatial shape into ``out`` (the layer's data shape) at this selection.

        Other indices of fixed axes (other time points) keep what they hold.
        """
        if heatmap.shape != self.spatial_shape:
            raise ValueError(f"heatmap shape {heatmap.shape} is not the spatial shape {self.spatial_shape}")
        if tuple(out.shape) != tuple(self.data_shape):
            raise ValueError(f"array shape {out.shape} is not the layer's data shape {self.data_shape}")
        out[self.index] = heatmap

    def describe(self) -> dict:
        """The selection as JSON-friendly metadata."""
        return {
            "layer": self.layer_name,
            "data_shape": list(self.data_shape),
            "fixed_axes": {str(axis): index for axis, index in self.fixed},
            "channel_axis": self.channel_axis,
        }


def check_volume_layer(layer: Layer) -> None:
    """Raise :class:`InputError` with a one-line cause and remedy if ``layer`` cannot be explained."""
    if not isinstance(layer, Image):
        kind = type(layer).__name__.lower()
        raise InputError(f"layer {layer.name!r} is a {kind} layer: choose an image layer holding a 3D volume")
    if layer.rgb:
        raise InputError(f"layer {layer.name!r} is RGB: Grad-CAM needs a single-channel volume; open it with rgb=False")
    if layer.ndim < SPATIAL_DIMS:
        raise InputError(
            f"layer {layer.name!r} is {layer.ndim}D (shape {tuple(full_resolution(layer).shape)}): "
            "Grad-CAM needs a 3D volume (D, H, W); open a stack, not a single slice"
        )


def _channel_axis(name: str, shape: Sequence[int], channels: int) -> int | None:
    leading = len(shape) - SPATIAL_DIMS
    if channels == 1:
        return None
    for axis in reversed(range(leading)):
        if shape[axis] == channels:
            return axis
    raise InputError(
        f"layer {name!r} has shape {tuple(shape)} but the model takes {channels} channels: "
        f"give a layer with a {channels}-long axis before the spatial axes, as (C, D, H, W)"
    )


def select_volume(layer: Layer, channels: int, world_point: Sequence[float] = ()) -> VolumeSelection:
    """What to explain of ``layer`` for a model taking ``channels`` channels.

    ``world_point`` is the viewer's current point (``viewer.dims.point``);
    it picks the index of each leading axis that is not the channel axis.
    """
    check_volume_layer(layer)
    shape = tuple(int(s) for s in full_resolution(layer).shape)
    channel_axis = _channel_axis(layer.name, shape, channels)
    leading = [axis for axis in range(len(shape) - SPATIAL_DIMS) if axis != channel_axis]
    position = layer.world_to_data(world_point) if leading and len(world_point) else np.zeros(len(shape))
    fixed = tuple((axis, int(np.clip(round(float(position[axis])), 0, shape[axis] - 1))) for axis in leading)
    return VolumeSelection(layer.name, shape, fixed, channel_axis)
