"""The small models the checkpoint tests save and load (the seeded ViT3D itself is the ``vit`` fixture)."""

from __future__ import annotations

from typing import Any

from napari_vitcam.models.spec import InputSpec, ModelSpec

CONFIG = {"img_size": 16, "patch_size": 8, "width": 16, "depth": 2, "heads": 2, "num_classes": 2}
"""The arguments of the ``vit`` fixture's ViT3D (16³ input, patch 8, width 16, two blocks, two classes)."""
SPEC = ModelSpec(input=InputSpec(spatial_size=(16, 16, 16)), architecture="ViT3D", arguments=CONFIG)
"""A spec for it, with nothing but the input size."""

MONAI_VIT = {
    "in_channels": 1,
    "img_size": [16, 16, 16],
    "patch_size": [8, 8, 8],
    "hidden_size": 16,
    "mlp_dim": 32,
    "num_layers": 1,
    "num_heads": 2,
    "classification": True,
    "num_classes": 2,
}


def monai_vit_arguments(**changes: Any) -> dict[str, Any]:
    """The arguments of a small MONAI ``ViT`` classifier (one block, two classes, 16³), with ``changes``."""
    return {**MONAI_VIT, **changes}
