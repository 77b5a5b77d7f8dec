"""napari-vitcam: Grad-CAM explanations for 3D Vision Transformers, inside napari.

The engine (``grad_cam``, ``explain_volume``, ``load_checkpoint``) is pure
torch/numpy and works without Qt or napari.
"""

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
from .methods import METHODS
from .targets import TargetCandidate, list_targets
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
    "LayoutError",
    "MissingExtraError",
    "ModelOutputError",
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
    "tokens_to_voxels",
]
