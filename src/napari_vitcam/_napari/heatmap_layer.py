"""The heatmap layer: its name, look, metadata, placement and replacement.

No Qt: works on any napari ``ViewerModel``. A heatmap copies every transform
of its source layer (scale, translate, rotate, shear, affine, units, axis
labels) and has the source's data shape, so it overlays voxel for voxel in
2D and 3D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Layer

from napari_vitcam._napari.layer_input import VolumeSelection
from napari_vitcam.engine.explainers import explainer_label
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.pipeline.explain import VolumeExplanation

GENERATOR = "napari-vitcam"
SEPARATOR = " · "

#: How a heatmap looks: a heat colormap added over the volume, 0..1 on the normalised map.
#: Inferno starts at black, so with additive blending a zero adds nothing and
#: the volume stays as it is away from the evidence; in 3D a maximum intensity
#: projection shows each ray's hottest point.
APPEARANCE = {
    "colormap": "inferno",
    "blending": "additive",
    "opacity": 0.5,
    "contrast_limits": (0.0, 1.0),
    "rendering": "mip",
    "interpolation2d": "linear",
    "interpolation3d": "linear",
}


@dataclass(frozen=True)
class HeatmapKey:
    """What makes two runs the same: a rerun replaces the layer with this key."""

    source_id: str
    class_name: str
    target_layer: str
    method: str

    @classmethod
    def from_metadata(cls, metadata: dict) -> HeatmapKey | None:
        if metadata.get("generator") != GENERATOR:
            return None
        try:
            return cls(
                metadata["source_layer_id"], metadata["class_name"], metadata["target_layer"], metadata["method"]
            )
        except KeyError:
            return None


def is_heatmap(layer: Layer) -> bool:
    """Whether ``layer`` is a heatmap this plugin made."""
    return layer.metadata.get("generator") == GENERATOR


def heatmap_name(explanation: VolumeExplanation) -> str:
    """E.g. ``Grad-CAM · lesion · blocks.4.norm1``."""
    return SEPARATOR.join((explainer_label(explanation.method), explanation.class_name, explanation.target_layer))


def source_transforms(source: Layer) -> dict:
    """Everything that places ``source``'s voxels in the world, as layer keyword arguments."""
    return {
        "scale": tuple(source.scale),
        "translate": tuple(source.translate),
        "rotate": np.array(source.rotate),
        "shear": tuple(source.shear),
        "affine": np.array(source.affine.affine_matrix),
        "units": tuple(source.units),
        "axis_labels": tuple(source.axis_labels),
    }


def heatmap_metadata(
    explanation: VolumeExplanation,
    loaded: LoadedModel,
    source: Layer,
    selection: VolumeSelection,
    *,
    requested_class: str,
    timings: dict[str, float],
) -> dict:
    """What reproduces the figure: method, block, class, probabilities, checkpoint, preprocessing, timings."""
    return {
        "generator": GENERATOR,
        "method": explanation.method,
        "method_label": explainer_label(explanation.method),
        "target_layer": explanation.target_layer,
        "class_index": explanation.class_idx,
        "class_name": explanation.class_name,
        "requested_class": requested_class,
        "predicted_class": explanation.predicted_name,
        "probabilities": dict(explanation.ranked_probabilities),
        "checkpoint": str(loaded.source) if loaded.source is not None else None,
        "checkpoint_sha256": dict(loaded.sha256),
        "architecture": loaded.spec.architecture,
        "preprocessing": dict(explanation.preprocessing),
        "upsample": explanation.upsample,
        "device": explanation.device,
        "raw_max": explanation.raw_max,
        "timings": {stage: float(seconds) for stage, seconds in timings.items()},
        "source_layer": source.name,
        "source_layer_id": str(source.unique_id),
        "selection": selection.describe(),
    }


def find_heatmap(layers, key: HeatmapKey) -> Image | None:
    """The topmost heatmap layer made with ``key``, if any."""
    for layer in reversed(list(layers)):
        if isinstance(layer, Image) and HeatmapKey.from_metadata(layer.metadata) == key:
            return layer
    return None


def _same(current, value) -> bool:
    if isinstance(current, tuple) and current and not isinstance(current[0], (int, float, np.number)):
        return current == tuple(value)  # units and axis labels
    return np.array_equal(np.asarray(current, dtype=float), np.asarray(value, dtype=float))


def _replace(layer: Image, data: np.ndarray, name: str, metadata: dict, transforms: dict) -> Image:
    """New data in place; transforms are set only where the source's changed (each set redraws)."""
    for attribute, value in transforms.items():
        current = layer.affine.affine_matrix if attribute == "affine" else getattr(layer, attribute)
        if not _same(current, value):
            setattr(layer, attribute, value)
    layer.data = data
    layer.metadata = metadata
    layer.name = name
    return layer


def show_heatmap(layers, source: Layer, data: np.ndarray, name: str, metadata: dict, *, keep_previous: bool) -> Image:
    """Add the heatmap above the layers, or replace the data of the one made with the same key.

    ``data`` must have ``source``'s data shape. With ``keep_previous`` a new
    layer is always added (napari makes its name unique).
    """
    transforms = source_transforms(source)
    key = HeatmapKey.from_metadata(metadata)
    existing = None if keep_previous or key is None else find_heatmap(layers, key)
    if existing is not None and existing.ndim == data.ndim:
        return _replace(existing, data, name, metadata, transforms)
    layer = Image(data, name=name, metadata=metadata, **transforms, **APPEARANCE)
    layers.append(layer)
    return layer
