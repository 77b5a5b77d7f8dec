"""Sample data: a demo volume with one lesion, and the lesion's mask as a labels layer."""

from __future__ import annotations

import numpy as np

DEFAULT_SEED = 0
VOLUME_NAME = "demo volume"
MASK_NAME = "lesion mask"


#: The top of the display range, relative to the 99.5th percentile: tissue
#: shows mid-grey, so a heatmap added over it stays visible.
HEADROOM = 1.6


def display_range(volume: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5th percentile to well above the 99.5th."""
    low, high = np.percentile(volume, (0.5, 99.5))
    return float(low), float(low + HEADROOM * max(high - low, 1e-6))


def demo_layers(seed: int = DEFAULT_SEED) -> list[tuple]:
    """The volume for ``seed`` and its lesion mask, as napari layer data tuples."""
    from napari_vitcam.demo.volumes import make_volume

    sample = make_volume(seed)
    about = {
        "seed": sample.seed,
        "label": sample.class_name,
        "class_names": list(sample.class_names),
        "lesion_center": list(sample.center),
        "lesion_diameter": sample.diameter,
    }
    volume = (
        sample.volume,
        {"name": VOLUME_NAME, "contrast_limits": display_range(sample.volume), "metadata": about},
        "image",
    )
    mask = (
        sample.mask.astype(np.uint8),
        {"name": MASK_NAME, "opacity": 0.5, "metadata": about},
        "labels",
    )
    return [volume, mask]


def demo_sample() -> list[tuple]:
    """npe2 sample-data command: the demo volume for the default seed."""
    return demo_layers(DEFAULT_SEED)
