"""Bringing a volume to what the model takes: channels, intensities, size.

Pure torch. Works on copies: the caller's array is never modified.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_vitcam.core.errors import InputError
from napari_vitcam.models.spec import InputSpec, Normalization


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


def normalize_volume(volume: torch.Tensor, normalization: Normalization, *, inplace: bool = False) -> torch.Tensor:
    """Intensity normalisation of a (C, D, H, W) tensor (see :class:`Normalization`).

    Out of place unless ``inplace`` (for a private copy: no full-size temporaries).
    """
    kind = normalization.kind
    lo_out, hi_out = normalization.out_range
    out = volume if inplace else volume.clone()
    if kind == "none":
        return out
    if kind == "zscore":
        mask = out != 0 if normalization.nonzero else None
        values = out[mask] if mask is not None else out
        if values.numel() == 0:
            return out
        mean = values.mean()
        std = values.std(unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        if mask is None:
            return out.sub_(mean).div_(std)
        out[mask] = (values - mean) / std
        return out
    if kind == "minmax":
        low, high = out.amin(), out.amax()
    else:
        low = torch.tensor(normalization.window[0], device=out.device)
        high = torch.tensor(normalization.window[1], device=out.device)
    span = high - low
    if float(span) == 0.0:
        return out.fill_(lo_out)
    out.sub_(low).mul_((hi_out - lo_out) / span).add_(lo_out)
    if kind == "window" and normalization.clip:
        out.clamp_(min(lo_out, hi_out), max(lo_out, hi_out))
    return out


def resize_volume(volume: torch.Tensor, size: tuple[int, int, int], mode: str) -> torch.Tensor:
    """Resize a (C, D, H, W) tensor to ``size``; trilinear uses ``align_corners=False``.

    With these conventions voxel centres keep their physical place, which is
    what :func:`~napari_vitcam.engine.voxel_map.tokens_to_voxels` assumes on the way back.
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
    x = volume_to_tensor(volume, spec.channels, device)  # a private copy: normalise it in place
    if spec.normalize_first:
        x = resize_volume(normalize_volume(x, spec.normalization, inplace=True), spec.spatial_size, spec.resize_mode)
    else:
        resized = resize_volume(x, spec.spatial_size, spec.resize_mode)
        x = normalize_volume(resized, spec.normalization, inplace=True)
    return x[None].contiguous()
