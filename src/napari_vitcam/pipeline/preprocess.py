"""Bringing a volume to what the model takes: channels, intensities, size.

Pure torch. Works on copies: the caller's array is never modified.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_vitcam.core.errors import InputError
from napari_vitcam.models.spec import InputSpec, Normalization
from napari_vitcam.pipeline.checks import NonFinite, check_finite_input, check_nonfinite_choice, finite_volume
from napari_vitcam.pipeline.frame import AxisFit, fit_volume


def as_array(volume) -> np.ndarray:
    """``volume`` as a numpy array; a torch tensor may require grad or live on a GPU."""
    if isinstance(volume, torch.Tensor):
        tensor = volume.detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return np.asarray(volume)


def volume_to_tensor(volume, channels: int, device: torch.device, *, nonfinite: NonFinite = "error") -> torch.Tensor:
    """A (D, H, W) or (C, D, H, W) array as a float32 (C, D, H, W) tensor on ``device``.

    The result is a copy: nothing done to it can reach the caller's array.
    Non-finite voxels (NaN, ±Inf, float64 beyond float32's range) are refused
    with their count and first index, or replaced with ``nonfinite="replace"``
    (see :func:`~napari_vitcam.pipeline.checks.finite_volume`).
    """
    nonfinite = check_nonfinite_choice(nonfinite)
    array = as_array(volume)
    if array.dtype.kind not in "biuf":
        raise InputError(f"the volume has dtype {array.dtype}: give a numeric (integer or float) image")
    given = array  # the caller's layout: non-finite voxels are reported by their index in it
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
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, with where it happens
        array32 = np.array(given, dtype=np.float32, order="C", copy=True)
    array32 = finite_volume(array32, given, nonfinite).reshape(array.shape)
    return torch.from_numpy(array32).to(device)


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
        if not bool(torch.isfinite(std)):
            check_finite_input(std[None], volume.cpu().numpy())
        std = torch.where(std > 0, std, torch.ones_like(std))
        if mask is None:
            return out.sub_(mean).div_(std)
        out[mask] = (values - mean) / std
        return out
    if kind == "minmax":
        low, high = out.amin(), out.amax()
    else:
        window = normalization.window
        if window is None:
            raise InputError("window normalisation without a window: give the window's (low, high) in the spec")
        low = torch.tensor(window[0], device=out.device)
        high = torch.tensor(window[1], device=out.device)
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


def prepare_input(
    volume,
    spec: InputSpec,
    device: torch.device,
    *,
    nonfinite: NonFinite = "error",
    fit: tuple[AxisFit, AxisFit, AxisFit] | None = None,
) -> torch.Tensor:
    """The model input (1, C, *spec.spatial_size) for a napari-style volume.

    Args:
        volume: (D, H, W) or (C, D, H, W), a numpy array, array-like or tensor; never modified.
        spec: the channels, normalisation and size the model takes.
        device: where the input is made.
        nonfinite: ``"error"`` refuses a volume with NaN or ±Inf voxels; ``"replace"`` replaces them.
        fit: the per-axis resampling and crop/pad to the model's size
            (:attr:`napari_vitcam.pipeline.frame.FramePlan.axes`), done in place of the resize; None: resize.
    """
    x = volume_to_tensor(volume, spec.channels, device, nonfinite=nonfinite)  # a private copy: normalise in place

    def to_size(tensor: torch.Tensor) -> torch.Tensor:
        if fit is not None:
            return fit_volume(tensor, fit, spec.resize_mode)
        return resize_volume(tensor, spec.spatial_size, spec.resize_mode)

    if spec.normalize_first:
        x = to_size(normalize_volume(x, spec.normalization, inplace=True))
    else:
        x = normalize_volume(to_size(x), spec.normalization, inplace=True)
    if not bool(torch.isfinite(x).all()):
        check_finite_input(x, as_array(volume))
    return x[None].contiguous()
