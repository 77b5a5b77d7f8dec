"""The heatmap layer: its name, look, metadata, placement and replacement.

No Qt: works on any napari ``ViewerModel``. A heatmap copies every transform
of its source layer (scale, translate, rotate, shear, affine, units, axis
labels) and has the source's data shape, so it overlays voxel for voxel in
2D and 3D.

A rerun replaces only a layer this plugin made (:class:`HeatmapLayers` tracks
them by identity, never by metadata, which a duplicated layer shares) and only
while the user has left it as it was made: a heatmap the user renamed, moved
or gave other data is theirs, and a rerun adds a new layer beside it. In a
time series a rerun writes its own time point and keeps the others.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image, Layer

from napari_vitcam._napari.layer_input import VolumeSelection
from napari_vitcam._napari.reader import METADATA_KEY
from napari_vitcam.core.errors import InputError
from napari_vitcam.core.vocabulary import name_of_class
from napari_vitcam.engine.explainers import explainer_label
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.pipeline.explain import VolumeExplanation
from napari_vitcam.pipeline.sweep import VolumeSweep

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


def source_file(layer: Layer) -> str | None:
    """The file or folder ``layer`` was opened from (absolute), or None: a heatmap is never saved over it."""
    path = layer.source.path
    if not path:
        described = layer.metadata.get(METADATA_KEY) if isinstance(layer.metadata, dict) else None
        path = described.get("source") if isinstance(described, dict) else None
    return str(Path(path).expanduser().resolve()) if path else None


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
        "source_file": source_file(source),
        "selection": selection.describe(),
        "score_layer": explanation.score_layer,
        "scores_explained": explanation.scores_explained,
        "probabilities_from": "the model's output",
    }


def _same(current, value) -> bool:
    if isinstance(current, tuple) and current and not isinstance(current[0], (int, float, np.number)):
        return current == tuple(value)  # units and axis labels
    return np.array_equal(np.asarray(current, dtype=float), np.asarray(value, dtype=float))


def _current(layer: Layer, attribute: str):
    return layer.affine.affine_matrix if attribute == "affine" else getattr(layer, attribute)


def _same_transforms(layer: Layer, transforms: dict) -> bool:
    return all(_same(_current(layer, attribute), value) for attribute, value in transforms.items())


@dataclass
class _Made:
    """A layer we made, and what we last set on it: anything else means the user changed it."""

    layer: weakref.ref
    name: str
    data: weakref.ref
    transforms: dict
    explained: list[dict] = field(default_factory=list)


class HeatmapLayers:
    """The heatmap layers one widget made, by identity, and how a new result reaches them.

    A layer counts as ours while it is in the viewer and has the name, the data
    array and the placement we gave it. A layer the user made, duplicated,
    renamed, moved or gave new data is never written into or renamed.
    """

    def __init__(self) -> None:
        self._made: dict[HeatmapKey, _Made] = {}

    def owned(self, layers, key: HeatmapKey) -> Image | None:
        """Our layer for ``key``, if the user left it as we made it; else None (and it is forgotten)."""
        entry = self._made.get(key)
        layer = entry.layer() if entry is not None else None
        if entry is None or layer is None:
            self._made.pop(key, None)
            return None
        if (
            layer not in layers
            or layer.name != entry.name
            or layer.data is not entry.data()
            or not _same_transforms(layer, entry.transforms)
        ):
            del self._made[key]
            return None
        return layer

    def show(
        self,
        layers,
        source: Layer,
        selection: VolumeSelection,
        heatmap: np.ndarray,
        name: str,
        metadata: dict,
        *,
        keep_previous: bool,
    ) -> Image:
        """Show ``heatmap`` (the selection's spatial shape) over ``source``; returns the layer.

        A rerun with the same key updates our layer: a 3D map replaces its data,
        a time point of a series is written into it and the other time points
        keep their maps. Otherwise, or with ``keep_previous``, a new layer is
        added above the others (napari makes its name unique).
        """
        transforms = source_transforms(source)
        key = HeatmapKey.from_metadata(metadata)
        if key is None:
            raise ValueError("heatmap metadata without its key: make it with heatmap_metadata")
        here = dict(selection.describe()["fixed_axes"])
        existing = None if keep_previous else self.owned(layers, key)
        if existing is not None and tuple(existing.data.shape) == tuple(selection.data_shape):
            entry = self._made[key]
            for attribute, value in transforms.items():  # only where the source moved: each set redraws
                if not _same(_current(existing, attribute), value):
                    setattr(existing, attribute, value)
            if selection.fixed or selection.channel_axis is not None:
                data = existing.data
                selection.write(data, heatmap)
                explained = [e for e in entry.explained if e != here] + [here]
            else:
                data = heatmap
                explained = [here]
            existing.metadata = {**metadata, "explained": explained}
            existing.data = data  # also redraws an array written in place
            self._record(key, existing, explained)
            return existing
        data = selection.embed(heatmap)
        layer = Image(data, name=name, metadata={**metadata, "explained": [here]}, **transforms, **APPEARANCE)
        layers.append(layer)
        self._record(key, layer, [here])
        return layer

    def _record(self, key: HeatmapKey, layer: Image, explained: list[dict]) -> None:
        self._made[key] = _Made(
            weakref.ref(layer), layer.name, weakref.ref(layer.data), source_transforms(layer), explained
        )


SWEEP_AXIS_LABELS = {"blocks": "block", "classes": "class"}


def sweep_name(sweep: VolumeSweep) -> str:
    """E.g. ``Grad-CAM · lesion · every block`` or ``Attention relevance · every class``."""
    parts: list[str] = [explainer_label(sweep.method)]
    if sweep.over == "blocks":
        parts += [name_of_class(sweep.class_names, sweep.class_idx[0]), "every block"]
    else:
        parts += ["every class", *([sweep.target_layer] if sweep.target_layer else [])]
    return SEPARATOR.join(parts)


def sweep_metadata(sweep: VolumeSweep, loaded: LoadedModel, source: Layer, selection: VolumeSelection) -> dict:
    """What each slice of a sweep layer is, and what made it."""
    return {
        "generator": GENERATOR,
        "sweep": {
            "over": sweep.over,
            "axis": 0,
            "labels": list(sweep.labels),
            "class_index": list(sweep.class_idx),
            "raw_max": list(sweep.raw_max),
        },
        "method": sweep.method,
        "method_label": explainer_label(sweep.method),
        "target_layer": sweep.target_layer,
        "predicted_class": sweep.predicted_name,
        "probabilities": {name_of_class(sweep.class_names, i): float(p) for i, p in enumerate(sweep.probabilities)},
        "probabilities_from": "the model's output",
        "checkpoint": str(loaded.source) if loaded.source is not None else None,
        "checkpoint_sha256": dict(loaded.sha256),
        "preprocessing": dict(sweep.preprocessing),
        "device": sweep.device,
        "timings": {stage: float(seconds) for stage, seconds in sweep.timings.items()},
        "source_layer": source.name,
        "source_layer_id": str(source.unique_id),
        "source_file": source_file(source),
        "selection": selection.describe(),
    }


def _with_leading_axis(transforms: dict, label: str) -> dict:
    """``source_transforms`` of a 3D layer, for a 4D layer whose new first axis is a stack (unit steps, no offset)."""
    rotate = np.eye(4)
    rotate[1:, 1:] = np.asarray(transforms["rotate"], dtype=float)
    affine = np.eye(5)
    affine[1:, 1:] = np.asarray(transforms["affine"], dtype=float)
    s01, s02, s12 = (float(v) for v in transforms["shear"])
    return {
        "scale": (1.0, *transforms["scale"]),
        "translate": (0.0, *transforms["translate"]),
        "rotate": rotate,
        "shear": (0.0, 0.0, 0.0, s01, s02, s12),
        "affine": affine,
        "units": ("pixel", *transforms["units"]),
        "axis_labels": (label, *transforms["axis_labels"]),
    }


def sweep_layer(source: Layer, selection: VolumeSelection, sweep: VolumeSweep, metadata: dict) -> Image:
    """A new 4D layer over a 3D ``source``: one slice per block or class, a slider to move between them."""
    if selection.fixed or selection.channel_axis is not None or len(selection.data_shape) != 3:
        raise InputError(
            f"a sweep is shown as one 4D layer over a 3D image, and {source.name!r} has {len(selection.data_shape)} "
            "axes: choose a 3D image layer, or explain one block and class at a time"
        )
    transforms = _with_leading_axis(source_transforms(source), SWEEP_AXIS_LABELS[sweep.over])
    return Image(sweep.heatmaps, name=sweep_name(sweep), metadata=metadata, **transforms, **APPEARANCE)
