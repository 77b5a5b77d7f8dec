"""Bringing a volume to what the model takes: channels, intensities, size.

Pure torch. Works on copies: the caller's array is never modified.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .spec import InputSpec, Normalization


def volume_to_tensor(volume, channels: int, device: torch.device) -> torch.Tensor:
    """A (D, H, W) or (C, D, H, W) array as a float32 (C, D, H, W) tensor on ``device``.

    The result is a copy: nothing done to it can reach the caller's array.
    """
    array = np.asarray(volume)
    if array.dtype.kind not in "biuf":
        raise InputError(f"the volume has dtype {array.dtype}: give a numeric (integer or float) image")
    if array.ndim == 3:
        if channels != 1:
            raise InputError(
                f"the volume has shape {array.shape} but the model takes {channels} channels: "
                f"give a ({channels}, D, H, W) volume"
            )
        array = array[None]
    elif array.ndim == 4:
        if array.shape[0] != channels:
            raise InputError(
                f"the volume has {array.shape[0]} channels (shape {array.shape}) but the model takes {channels}: "
                f"give a ({channels}, D, H, W) volume"
            )
    else:
        raise InputError(
            f"the volume has {array.ndim} dimensions (shape {array.shape}): give a 3-D (D, H, W) "
            "or channel-first 4-D (C, D, H, W) volume"
        )
    if min(array.shape[1:]) < 1:
        raise InputError(f"the volume has an empty axis (shape {array.shape}): give a non-empty volume")
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True)).to(device)


def normalize_volume(volume: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Intensity normalisation of a (C, D, H, W) tensor, out of place (see :class:`Normalization`)."""
    kind = normalization.kind
    lo_out, hi_out = normalization.out_range
    if kind == "none":
        return volume
    if kind == "zscore":
        values = volume[volume != 0] if normalization.nonzero else volume
        if values.numel() == 0:
            return volume.clone()
        mean = values.mean()
        std = values.std(unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        out = (volume - mean) / std
        return torch.where(volume != 0, out, volume) if normalization.nonzero else out
    if kind == "minmax":
        low, high = volume.amin(), volume.amax()
    else:
        low = torch.tensor(normalization.window[0], device=volume.device)
        high = torch.tensor(normalization.window[1], device=volume.device)
    span = high - low
    if float(span) == 0.0:
        return torch.full_like(volume, lo_out)
    out = (volume - low) * ((hi_out - lo_out) / span) + lo_out
    if kind == "window" and normalization.clip:
        out = out.clamp_(min(lo_out, hi_out), max(lo_out, hi_out))
    return out


def resize_volume(volume: torch.Tensor, size: tuple[int, int, int], mode: str) -> torch.Tensor:
    """Resize a (C, D, H, W) tensor to ``size``; trilinear uses ``align_corners=False``.

    With these conventions voxel centres keep their physical place, which is
    what :func:`~napari_vitcam.voxel_map.tokens_to_voxels` assumes on the way back.
    """
    if tuple(volume.shape[1:]) == tuple(size):
        return volume
    batch = volume[None]
    if mode == "trilinear":
        out = F.interpolate(batch, size=size, mode="trilinear", align_corners=False)
    elif mode == "area":
        out = F.adaptive_avg_pool3d(batch, size)
    else:
        out = F.interpolate(batch, size=size, mode="nearest-exact")
    return out[0]


def prepare_input(volume, spec: InputSpec, device: torch.device) -> torch.Tensor:
    """The model input (1, C, *spec.spatial_size) for a napari-style volume."""
    x = volume_to_tensor(volume, spec.channels, device)
    if spec.normalize_first:
        x = resize_volume(normalize_volume(x, spec.normalization), spec.spatial_size, spec.resize_mode)
    else:
        x = normalize_volume(resize_volume(x, spec.spatial_size, spec.resize_mode), spec.normalization)
    return x[None].contiguous()
