"""napari-vitcam: Grad-CAM explanations for 3D Vision Transformers, inside napari.

The engine (``grad_cam``, ``explain_volume``, ``load_checkpoint``) is pure
torch/numpy and works without Qt or napari.
"""

from napari_vitcam.batch.run import explain_many
from napari_vitcam.core.errors import (
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
from napari_vitcam.engine.cam import CamResult, grad_cam
from napari_vitcam.engine.dispatch import explain_tokens
from napari_vitcam.engine.explainers import EXPLAINERS
from napari_vitcam.engine.sweeps import Sweep, sweep_blocks, sweep_classes
from napari_vitcam.engine.targets import TargetCandidate, list_targets, recommended_target
from napari_vitcam.engine.token_grid import TokenGrid
from napari_vitcam.engine.voxel_map import tokens_to_voxels
from napari_vitcam.models.architectures.vit3d import ViT3D, ViTConfig
from napari_vitcam.models.checkpoint import load_checkpoint, save_checkpoint
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.models.targets import targets_for
from napari_vitcam.pipeline.devices import available_devices, pick_device
from napari_vitcam.pipeline.explain import VolumeExplanation, explain_volume

__version__ = "0.1.0"

__all__ = [
    "EXPLAINERS",
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
    "Sweep",
    "TargetCandidate",
    "TargetLayerError",
    "TokenGrid",
    "UntrustedCheckpointError",
    "ViT3D",
    "ViTConfig",
    "VitcamError",
    "VolumeExplanation",
    "available_devices",
    "explain_many",
    "explain_tokens",
    "explain_volume",
    "grad_cam",
    "list_targets",
    "load_checkpoint",
    "pick_device",
    "recommended_target",
    "save_checkpoint",
    "sweep_blocks",
    "sweep_classes",
    "targets_for",
    "tokens_to_voxels",
]
