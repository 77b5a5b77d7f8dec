"""What made a heatmap, as a JSON-ready record stored with it (file headers, sidecars, tables)."""

from __future__ import annotations

from typing import Any

from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.pipeline.explain import VolumeExplanation
from napari_vitcam.volumes.base import Volume, json_ready


def heatmap_provenance(
    result: VolumeExplanation, loaded: LoadedModel, volume: Volume, *, generator: str = "napari-vitcam"
) -> dict[str, Any]:
    """Method, layer, class, probabilities, checkpoint digests, preprocessing and the source's geometry.

    Args:
        result: the explanation.
        loaded: the model that made it.
        volume: the volume it explains (its description, without the RAS affine, is kept).
        generator: who wrote the record (the command line, a batch).
    """
    return json_ready(
        {
            "generator": generator,
            "method": result.method,
            "target_layer": result.target_layer,
            "class_index": result.class_idx,
            "class_name": result.class_name,
            "predicted_class": result.predicted_name,
            "probabilities": dict(result.ranked_probabilities),
            "raw_max": result.raw_max,
            "upsample": result.upsample,
            "checkpoint": str(loaded.source) if loaded.source is not None else None,
            "checkpoint_sha256": dict(loaded.sha256),
            "preprocessing": dict(result.preprocessing),
            "volume": {k: v for k, v in volume.describe().items() if k != "affine_ras"},
        }
    )
