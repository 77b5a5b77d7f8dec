"""napari-vitcam: Grad-CAM explanations for 3D Vision Transformers, inside napari.

The engine (``grad_cam``, ``explain_volume``, ``load_checkpoint``) is pure
torch/numpy and works without Qt or napari.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .devices import available_devices, pick_device
from .engine import CamResult, grad_cam
from .errors import (
    Cancelled,
    CheckpointError,
    DegenerateTargetError,
    DeviceError,
    DeviceOutOfMemoryError,
    InputError,
    LayoutError,
    MissingExtraError,
    ModelOutputError,
    TargetLayerError,
    UntrustedCheckpointError,
    VitcamError,
)
from .explain import VolumeExplanation, explain_volume
from .loaded_model import LoadedModel
from .methods import METHODS
from .spec import InputSpec, ModelSpec, Normalization
from .targets import TargetCandidate, list_targets, recommended_target, targets_for
from .token_grid import TokenGrid
from .vit import ViT3D, ViTConfig
from .voxel_map import tokens_to_voxels

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "CamResult",
    "Cancelled",
    "CheckpointError",
    "DegenerateTargetError",
    "DeviceError",
    "DeviceOutOfMemoryError",
    "InputError",
    "InputSpec",
    "LayoutError",
    "LoadedModel",
    "MissingExtraError",
    "ModelOutputError",
    "ModelSpec",
    "Normalization",
    "TargetCandidate",
    "TargetLayerError",
    "TokenGrid",
    "UntrustedCheckpointError",
    "ViT3D",
    "ViTConfig",
    "VitcamError",
    "VolumeExplanation",
    "available_devices",
    "explain_volume",
    "pick_device",
    "grad_cam",
    "list_targets",
    "load_checkpoint",
    "recommended_target",
    "save_checkpoint",
    "targets_for",
    "tokens_to_voxels",
]
