"""The demo model shipped with the package, and the seed ranges its data come from.

Kept apart from training and evaluation so that the app, the sample data and
both commands can name the shipped checkpoint without importing each other.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "data" / "demo_vit.safetensors"
"""The demo ViT: ``napari-vitcam train-demo --install`` writes it, the demo app loads it."""

SHIPPED_CLS_CHECKPOINT = Path(__file__).resolve().parent / "data" / "demo_vit_cls.safetensors"
"""A cls-token demo ViT, built as the method write-up and MONAI build them, trained by
``napari-vitcam train-demo --pool cls --readout-weight 0 --pooling-weight 0 --seed 3`` (no loss that guides
its attention): its default explainer is attention rollout (see ``docs/evaluation.md``)."""

TRAIN_SEED_START = 10_000_000
"""Training volumes are drawn from seeds from here on."""

VALIDATION_SEED_START = 5_000_000
"""Seeds used to choose the recommended block start here (disjoint from training); evaluation uses seeds below."""


def shipped_checkpoint() -> Path:
    """The shipped demo checkpoint's path."""
    return SHIPPED_CHECKPOINT
