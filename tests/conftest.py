"""Fixtures shared by every test folder.

Tiny real models live in :mod:`napari_vitcam.testing.models` (importable from
benchmarks too); the fixtures here hand them out and keep every test away from
the user's own settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_vitcam._napari.recent import CONFIG_DIR_VARIABLE
from napari_vitcam.models.architectures.vit3d import ViT3D
from napari_vitcam.testing.models import OneRegionClassifier, tiny_vit


@pytest.fixture(autouse=True)
def config_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own settings folder: the user's recent checkpoints are never read or written."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(folder))
    return folder


@pytest.fixture
def vit() -> ViT3D:
    """A seeded cls-token ViT3D: 16³ input, patch 8, width 16, two blocks, two classes."""
    return tiny_vit()


@pytest.fixture
def pooled_vit() -> ViT3D:
    """The same with a mean-pooled head (no cls token)."""
    return tiny_vit(pool="mean")


@pytest.fixture
def region_reader() -> OneRegionClassifier:
    """A model that decides from one known patch only (see :class:`OneRegionClassifier`)."""
    return OneRegionClassifier()


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")
